"""Plugin authoring: `astrid plugin new` scaffolding and the plugin builder.

    scaffold_plugin(name, dest) -> Path     new.py: dest/NAME with a Python plugin
    build_plugin(plugin_dir, ...)           build.py: plugin dir -> component
"""

from astrid_runtime.scaffold.new import ScaffoldError, build_hint, scaffold_plugin

__all__ = ["ScaffoldError", "build_hint", "scaffold_plugin"]
