"""Link test parts: the WAT importer and the hostile C provider, and a boot tree.

`build_caller` embeds `links/caller/caller.wat` in the `astrid:linktest/caller`
world (the plugin world plus an import of `astrid:markdown/render`);
`build_hostile` builds `links/mdhostile` with the project's C toolchain.
Both are cached in `build/` by the blake3 of their inputs, like
`testcomponents`. `write_tree` lays out plugin dirs and a `plugins.lock`
pinning them, so the kernel boots them as an operator would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from testcomponents import BIN, BUILD, HERE, ROOT, WIT, _key, _publish

from astrid_runtime.grants import Grants, Limits
from astrid_runtime.lockfile import Lockfile, entry_for
from astrid_runtime.manifest import load_manifest
from astrid_runtime.scaffold.build import build_plugin

LINKS = HERE / "links"
MARKDOWN_DIR = ROOT / "plugins" / "markdown"
MARKDOWN_WIT = MARKDOWN_DIR / "wit" / "markdown.wit"
RENDER = "astrid:markdown/render@0.1.0"


def build_caller() -> Path:
    src = LINKS / "caller"
    inputs = [src / "caller.wat", src / "caller.wit", MARKDOWN_WIT, *WIT.glob("*.wit")]
    out = BUILD / f"mdcaller-{_key(*inputs)}.wasm"
    if out.exists():
        return out
    stage = BUILD / f".mdcaller-wit.{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "deps" / "kernel").mkdir(parents=True)
    (stage / "deps" / "markdown").mkdir(parents=True)
    shutil.copyfile(src / "caller.wit", stage / "caller.wit")
    shutil.copyfile(MARKDOWN_WIT, stage / "deps" / "markdown" / "markdown.wit")
    for path in WIT.glob("*.wit"):
        shutil.copyfile(path, stage / "deps" / "kernel" / path.name)
    core = BUILD / f".mdcaller.{os.getpid()}.core.wasm"
    tmp = BUILD / f".mdcaller.{os.getpid()}.wasm"
    tool = str(BIN / "wasm-tools")
    subprocess.run([tool, "component", "embed", str(stage), str(src / "caller.wat"),
                    "-o", str(core)], check=True, capture_output=True)
    subprocess.run([tool, "component", "new", str(core), "-o", str(tmp)], check=True,
                   capture_output=True)
    core.unlink()
    shutil.rmtree(stage)
    return _publish(tmp, out)


def build_mdwrap() -> Path:
    """A WAT provider that imports astrid:markdown/render and exports astrid:mdwrap/wrap."""
    src = LINKS / "mdwrap"
    out = BUILD / f"mdwrap-{_key(src / 'mdwrap.wat', src / 'mdwrap.wit', MARKDOWN_WIT)}.wasm"
    if out.exists():
        return out
    stage = BUILD / f".mdwrap-wit.{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "deps" / "markdown").mkdir(parents=True)
    shutil.copyfile(src / "mdwrap.wit", stage / "mdwrap.wit")
    shutil.copyfile(MARKDOWN_WIT, stage / "deps" / "markdown" / "markdown.wit")
    core = BUILD / f".mdwrap.{os.getpid()}.core.wasm"
    tmp = BUILD / f".mdwrap.{os.getpid()}.wasm"
    tool = str(BIN / "wasm-tools")
    subprocess.run([tool, "component", "embed", str(stage), str(src / "mdwrap.wat"),
                    "-o", str(core)], check=True, capture_output=True)
    subprocess.run([tool, "component", "new", str(core), "-o", str(tmp)], check=True,
                   capture_output=True)
    core.unlink()
    shutil.rmtree(stage)
    return _publish(tmp, out)


def build_hostile() -> Path:
    src = LINKS / "mdhostile"
    out = BUILD / f"mdhostile-{_key(*sorted(p for p in src.rglob('*') if p.is_file()))}.wasm"
    if out.exists():
        return out
    work = BUILD / f".mdhostile-build.{os.getpid()}"
    tmp = BUILD / f".mdhostile.{os.getpid()}.wasm"
    build_plugin(src, out=tmp, work_dir=work, force=True)
    shutil.rmtree(work)
    tmp.with_suffix(".inputs").unlink(missing_ok=True)
    return _publish(tmp, out)


@dataclass(frozen=True)
class PluginDir:
    """One plugin to lay out: its manifest's text, and how its pin differs from its asks."""

    name: str
    component: Path
    manifest: str  # the lines after name/version/component
    grants: Grants | None = None  # None: pinned as asked
    limits: Limits | None = None


CALLER_MANIFEST = f"""config = "in.*"
imports = ["{RENDER}"]
[capabilities]
subscribe = ["in.*"]
publish = ["md.ok", "md.err"]
"""


def provider_manifest(export: str = RENDER, config: str = "") -> str:
    return f'config = "{config}"\nexports = ["{export}"]\n'


def write_tree(root: Path, plugins: list[PluginDir]) -> Path:
    """Plugin dirs under `root` and `root/plugins.lock` pinning each; returns the lock path."""
    lock = Lockfile(root / "plugins.lock")
    for plugin in plugins:
        d = root / plugin.name
        d.mkdir(parents=True, exist_ok=True)
        limits = "" if plugin.limits is None else "[limits]\n" + "".join(
            f"{key} = {value!r}\n" for key, value in plugin.limits.to_toml().items())
        (d / "plugin.toml").write_text(
            f'name = "{plugin.name}"\nversion = "0.1.0"\ncomponent = "{plugin.component}"\n'
            + plugin.manifest + limits)
        manifest = load_manifest(d)
        entry = entry_for(manifest, plugin.component.read_bytes())
        if plugin.grants is not None:
            entry = replace(entry, grants=plugin.grants)
        lock = lock.with_entry(entry)
    lock.save()
    return lock.path


def compose(root: Path, dependency: Path) -> Path:
    """`wasm-tools compose ROOT -d DEPENDENCY`: the static alternative to a link (one
    component, one Store, shared fate), cached like the rest."""
    out = BUILD / f"composed-{_key(root, dependency)}.wasm"
    if out.exists():
        return out
    tmp = BUILD / f".composed.{os.getpid()}.wasm"
    subprocess.run([str(BIN / "wasm-tools"), "compose", str(root), "-d", str(dependency),
                    "-o", str(tmp)], check=True, capture_output=True)
    return _publish(tmp, out)
