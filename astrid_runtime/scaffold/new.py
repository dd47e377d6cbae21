"""`astrid plugin new NAME [--lang python|c|js]`: a plugin directory that builds and runs
as it is.

The templates live in `templates/` (Python), `templates/c/` (C) and
`templates/js/` (JavaScript, built with componentize-js);
`{{name}}` is the only placeholder. A Python plugin gets `plugin.toml`,
`app.py` and a `.gitignore` for `build/`; a C plugin gets `plugin.toml`,
`NAME.c` and the `.gitignore`, and includes the kernel's C SDK
(`astrid_runtime/sdk/c/astrid.h`), which the builder adds: the ABI glue is
shipped once, never copied into the plugin.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from astrid_runtime.errors import KernelError
from astrid_runtime.manifest import NAME_RE
from astrid_runtime.scaffold.build import JS_TOOL_PACKAGE

#: template file -> name in the new plugin directory
TEMPLATES = {"plugin.toml": "plugin.toml", "app.py": "app.py", "gitignore": ".gitignore"}
#: per language: template file -> name ({{name}} replaced) in the new plugin directory
LANGUAGES = {
    "python": TEMPLATES,
    "c": {"c/plugin.toml": "plugin.toml", "c/plugin.c": "{{name}}.c",
          "gitignore": ".gitignore"},
    "js": {"js/plugin.toml": "plugin.toml", "js/app.js": "app.js", "gitignore": ".gitignore"},
}


class ScaffoldError(KernelError):
    """A plugin that cannot be scaffolded (bad name, directory in the way)."""


def render(template: str, name: str) -> str:
    """The text of `template` (a file in `templates/`) for a plugin called `name`."""
    text = files("astrid_runtime.scaffold").joinpath("templates", *template.split("/")
                                                     ).read_text("utf-8")
    return text.replace("{{name}}", name)


def scaffold_plugin(name: str, dest: Path, lang: str = "python") -> Path:
    """Create `dest/NAME/` with a working plugin in `lang`; returns that directory.

    Raises `ScaffoldError` (one line) for a name the manifest would refuse,
    an unknown language, or when `dest/NAME` already exists. `dest` is
    created if missing.
    """
    if lang not in LANGUAGES:
        raise ScaffoldError(f"no plugin template for {lang!r}; use one of "
                            + ", ".join(sorted(LANGUAGES)))
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
    for template, target in LANGUAGES[lang].items():
        (plugin_dir / target.replace("{{name}}", name)).write_text(render(template, name),
                                                                 encoding="utf-8")
    return plugin_dir


def build_hint(plugin_dir: Path, lang: str) -> str:
    """What `astrid plugin new` prints: how to build and install `plugin_dir`, with the
    installed package alone (no script of this repository), anywhere."""
    hint = (f"created {plugin_dir} (build it with `astrid plugin build {plugin_dir}`, then "
            f"`astrid plugin install {plugin_dir}`)")
    if lang == "js":  # the one toolchain pip does not bring
        hint += (f"\nthe build needs componentize-js from npm, e.g. `npm install --prefix "
                 f"{plugin_dir.parent} {JS_TOOL_PACKAGE}`")
    return hint
