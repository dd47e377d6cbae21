"""`astrid plugin new NAME`: a Python plugin directory that builds and runs as it is.

The templates live in `templates/`; `{{name}}` is the only placeholder. The
new directory holds `plugin.toml`, `app.py` and a `.gitignore` for `build/`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from astrid_runtime.errors import KernelError
from astrid_runtime.manifest import NAME_RE

#: template file -> name in the new plugin directory
TEMPLATES = {"plugin.toml": "plugin.toml", "app.py": "app.py", "gitignore": ".gitignore"}


class ScaffoldError(KernelError):
    """A plugin that cannot be scaffolded (bad name, directory in the way)."""


def render(template: str, name: str) -> str:
    """The text of `template` (a file in `templates/`) for a plugin called `name`."""
    text = files("astrid_runtime.scaffold").joinpath("templates", template).read_text("utf-8")
    return text.replace("{{name}}", name)


def scaffold_plugin(name: str, dest: Path) -> Path:
    """Create `dest/NAME/` with a working Python plugin; returns that directory.

    Raises `ScaffoldError` (one line) for a name the manifest would refuse,
    or when `dest/NAME` already exists. `dest` is created if missing.
    """
    if not NAME_RE.match(name):
        raise ScaffoldError(f"plugin name {name!r}: use lowercase letters, digits and '-', "
                            "starting with a letter (at most 63 characters)")
    plugin_dir = dest / name
    try:
        dest.mkdir(parents=True, exist_ok=True)
        plugin_dir.mkdir()
    except FileExistsError:
        raise ScaffoldError(f"{plugin_dir} already exists; pick another name or remove it"
                            ) from None
    except OSError as e:
        raise ScaffoldError(f"cannot create {plugin_dir}: {e.strerror}") from None
    for template, target in TEMPLATES.items():
        (plugin_dir / target).write_text(render(template, name), encoding="utf-8")
    return plugin_dir
