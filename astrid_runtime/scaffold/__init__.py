"""Plugin authoring: `astrid plugin new` scaffolding and the plugin builder.

    scaffold_plugin(name, dest) -> Path     new.py: dest/NAME with a Python plugin
    build_plugin(plugin_dir, ...)           build.py: plugin dir -> component
"""

from astrid_runtime.scaffold.new import ScaffoldError, scaffold_plugin

__all__ = ["ScaffoldError", "scaffold_plugin"]
