"""Builds the test components from their sources, cached by content.

- `wat/NAME.wat`: a hand-written core module, turned into an
  `astrid:kernel/plugin` component with `wasm-tools component embed/new`
  (milliseconds).
- `NAME/app.py`: a componentize-py app (seconds; cached).

Artifacts land in `components/build/` (git-ignored) under a name that
includes the blake3 of every input, so a changed source or WIT rebuilds.
Used by tests and by `scripts/bench/`.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import blake3

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
WIT = ROOT / "astrid_runtime" / "wit"
BUILD = HERE / "build"
BIN = Path(sys.executable).parent


def _key(*paths: Path) -> str:
    h = blake3.blake3()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _inputs(src: Path) -> list[Path]:
    files = [p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return files + sorted(WIT.glob("*.wit"))


def _publish(tmp: Path, out: Path) -> Path:
    os.replace(tmp, out)
    return out


def build_wat(name: str) -> Path:
    """The component for `wat/NAME.wat`."""
    src = HERE / "wat" / f"{name}.wat"
    out = BUILD / f"{name}-{_key(src, *sorted(WIT.glob('*.wit')))}.wasm"
    if out.exists():
        return out
    BUILD.mkdir(exist_ok=True)
    core = BUILD / f".{name}.{os.getpid()}.core.wasm"
    tmp = BUILD / f".{name}.{os.getpid()}.wasm"
    tool = str(BIN / "wasm-tools")
    subprocess.run([tool, "component", "embed", str(WIT), "--world", "plugin", str(src),
                    "-o", str(core)], check=True, capture_output=True)
    subprocess.run([tool, "component", "new", str(core), "-o", str(tmp)], check=True,
                   capture_output=True)
    core.unlink()
    return _publish(tmp, out)


def build_python(name: str) -> Path:
    """The component for the componentize-py app in `NAME/app.py` (built once for
    all pytest-xdist workers: the first holds the build's lock, the others wait)."""
    src = HERE / name
    out = BUILD / f"{name}-{_key(*_inputs(src))}.wasm"
    if out.exists():
        return out
    BUILD.mkdir(exist_ok=True)
    with open(BUILD / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        tmp = BUILD / f".{name}.{os.getpid()}.wasm"
        subprocess.run([str(BIN / "componentize-py"), "-d", str(WIT), "-w", "plugin",
                        "componentize", "-p", str(src), "app", "-o", str(tmp)],
                       check=True, capture_output=True, cwd=BUILD)
        return _publish(tmp, out)


def build_wrong_world() -> Path:
    """A valid component of another world (exports `run`, not init/on-message)."""
    wit_dir = HERE / "wrong"
    src = wit_dir / "wrong.wat"
    out = BUILD / f"wrong-{_key(src, wit_dir / 'wrong.wit')}.wasm"
    if out.exists():
        return out
    BUILD.mkdir(exist_ok=True)
    core = BUILD / f".wrong.{os.getpid()}.core.wasm"
    tmp = BUILD / f".wrong.{os.getpid()}.wasm"
    tool = str(BIN / "wasm-tools")
    subprocess.run([tool, "component", "embed", str(wit_dir / "wrong.wit"), "--world", "other",
                    str(src), "-o", str(core)], check=True, capture_output=True)
    subprocess.run([tool, "component", "new", str(core), "-o", str(tmp)], check=True,
                   capture_output=True)
    core.unlink()
    return _publish(tmp, out)


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["hostile", "relay", "pyecho"]:
        path = build_python(arg) if (HERE / arg / "app.py").exists() else build_wat(arg)
        print(path)
