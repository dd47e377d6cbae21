"""scripts/bench/fs.py, part 2: the legs, i.e. how each file system is mounted
over the data set (native, kernel overlayfs, fuse-overlayfs, astrid-fs on its
daemon path and with --passthrough), and whether a leg can run here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fs_dataset import is_mounted, log, run

REPO = Path(__file__).resolve().parents[2]
LEGS = ["native", "kernel", "fuse-overlayfs", "astrid-fs", "astrid-fs-pt", "astrid-fs-uring",
        "astrid-fs-pt-uring"]
# (lists: `add_variant` adds its legs to them)
ASTRID_LEGS = ["astrid-fs", "astrid-fs-pt", "astrid-fs-uring", "astrid-fs-pt-uring"]
PASSTHROUGH_LEGS = ["astrid-fs-pt", "astrid-fs-pt-uring"]
IO_URING_LEGS = ["astrid-fs-uring", "astrid-fs-pt-uring"]
BUILT_IN_ASTRID_LEGS = tuple(ASTRID_LEGS)
LEG_TITLE = {
    "native": "native ext4",
    "kernel": "kernel overlayfs",
    "fuse-overlayfs": "fuse-overlayfs",
    "astrid-fs": "astrid-fs --no-io-uring (/dev/fuse)",
    "astrid-fs-pt": "astrid-fs --passthrough --no-io-uring",
    "astrid-fs-uring": "astrid-fs (default: io_uring)",
    "astrid-fs-pt-uring": "astrid-fs --passthrough (io_uring)",
}
# What each astrid-fs leg is called in the table's "met?" columns. (The legs
# kept their names from before io_uring became the mount's default.)
LEG_PATH = {"astrid-fs": "/dev/fuse", "astrid-fs-pt": "passthrough, /dev/fuse",
            "astrid-fs-uring": "default", "astrid-fs-pt-uring": "passthrough"}


# Extra astrid-fs legs for an A/B in one run: NAME -> environment of its mounts.
VARIANT_ENV: dict[str, dict[str, str]] = {}


def add_variant(spec: str) -> str:
    """Register `NAME=LEG[,VAR=VALUE...]`: an astrid-fs leg (LEG one of
    ASTRID_LEGS) mounted with VAR=VALUE in the mount command's environment,
    e.g. `shim21=astrid-fs,ASTRID_FS_SHIM=/tmp/shim21.so` to compare two builds
    of the FUSE shim, or `adaptive=astrid-fs-uring,ASTRID_FS_COPYUP_THREADS=adaptive`.
    Returns NAME; ValueError with a one-line reason if the spec is bad."""
    name, sep, rest = spec.partition("=")
    base, *pairs = rest.split(",")
    if not sep or not name or name in LEG_TITLE or "," in name:
        raise ValueError(f"bad variant {spec!r}: want NAME=LEG[,VAR=VALUE...] with a new NAME")
    if base not in BUILT_IN_ASTRID_LEGS:
        raise ValueError(f"bad variant {spec!r}: LEG must be one of "
                         f"{', '.join(BUILT_IN_ASTRID_LEGS)}")
    env = {}
    for pair in pairs:
        var, eq, value = pair.partition("=")
        if not eq or not var:
            raise ValueError(f"bad variant {spec!r}: {pair!r} is not VAR=VALUE")
        env[var] = value
    VARIANT_ENV[name] = env
    ASTRID_LEGS.append(name)
    if base in PASSTHROUGH_LEGS:
        PASSTHROUGH_LEGS.append(name)
    if base in IO_URING_LEGS:
        IO_URING_LEGS.append(name)
    shown = " ".join(f"{k}={v}" for k, v in env.items())
    LEG_TITLE[name] = f"{name}: {LEG_TITLE[base]}" + (f" {shown}" if shown else "")
    LEG_PATH[name] = f"{LEG_PATH[base]}, {name}"
    return name


def control_socket(mnt: Path) -> str:
    """The control socket of the astrid-fs session a leg mounted at `mnt`."""
    state = json.loads(next((mnt.parent / "home" / "sessions").glob("*/run/state.json"))
                       .read_text())
    return str(state["control"])


def astrid_fs_program() -> Path | None:
    for cand in (Path(sys.executable).parent / "astrid-fs", REPO / ".venv" / "bin" / "astrid-fs"):
        if cand.exists():
            return cand
    found = shutil.which("astrid-fs")
    return Path(found) if found else None


@dataclass
class Leg:
    name: str
    data: Path
    scratch: Path
    counter: int = 0
    mounted: list[Path] = field(default_factory=list)

    def fresh_dirs(self) -> tuple[Path, Path, Path]:
        self.counter += 1
        d = self.scratch / f"{self.name}-{os.getpid()}-{self.counter}"
        upper, work, mnt = d / "upper", d / "work", d / "mnt"
        for p in (upper, work, mnt):
            p.mkdir(parents=True)
        return upper, work, mnt

    def _mount(self, writable_copy: bool) -> Path:
        """Mount a fresh view of the data set; return the directory to work in."""
        upper, work, mnt = self.fresh_dirs()
        opts = f"lowerdir={self.data},upperdir={upper},workdir={work}"
        if self.name == "native":
            # a writable native copy of what the workloads modify; reads use the data set
            if writable_copy:
                shutil.copytree(self.data / "copyup", mnt / "copyup", symlinks=True)
            return mnt
        if self.name == "kernel":
            run(["mount", "-t", "overlay", "overlay", "-o", opts + ",redirect_dir=on", str(mnt)])
        elif self.name == "fuse-overlayfs":
            run(["fuse-overlayfs", "-o", opts, str(mnt)])
        elif self.name in ASTRID_LEGS:
            prog = astrid_fs_program()
            if prog is None:
                raise RuntimeError("no astrid-fs program found")
            home = upper.parent / "home"
            home.mkdir()
            path = "--passthrough" if self.name in PASSTHROUGH_LEGS else "--no-passthrough"
            ring = "--io-uring" if self.name in IO_URING_LEGS else "--no-io-uring"
            run([str(prog), "mount", "--lower", str(self.data), "--session",
                 f"bench{self.counter}", path, ring, str(mnt)],
                env=dict(os.environ, ASTRID_HOME=str(home), **VARIANT_ENV.get(self.name, {})))
        else:
            raise ValueError(self.name)
        self.mounted.append(mnt)
        return mnt

    def _umount(self, mnt: Path) -> None:
        if mnt in self.mounted:
            self.mounted.remove(mnt)
        if not is_mounted(mnt):
            return
        if self.name in ASTRID_LEGS:
            prog = astrid_fs_program()
            home = mnt.parent / "home"
            run([str(prog), "umount", str(mnt)], env=dict(os.environ, ASTRID_HOME=str(home)))
        else:
            run(["umount", str(mnt)])

    @contextmanager
    def view(self, writable_copy: bool = True) -> Iterator[tuple[Path, Path]]:
        """(read root, write root): the data set as this leg shows it, and where
        this leg's writes go (the same mount for overlays, a native copy for native)."""
        mnt = self._mount(writable_copy)
        try:
            yield (self.data if self.name == "native" else mnt), mnt
        finally:
            self._umount(mnt)

    def cleanup(self) -> None:
        for mnt in list(self.mounted):
            try:
                self._umount(mnt)
            except RuntimeError as e:
                log(f"warning: {e}; lazy unmount")
                subprocess.run(["umount", "-l", str(mnt)], check=False)


def probe(leg: Leg) -> str | None:
    """None if the leg can mount here, else why not."""
    if leg.name == "native":
        return None
    if leg.name == "fuse-overlayfs" and shutil.which("fuse-overlayfs") is None:
        return "fuse-overlayfs not installed (apt-get install fuse-overlayfs)"
    if leg.name in ASTRID_LEGS and astrid_fs_program() is None:
        return "astrid-fs program not found"
    try:
        with leg.view(writable_copy=False) as (root, mnt):
            if not (root / "big").exists():
                return "mounted, but the data set is not visible through it"
            if leg.name in PASSTHROUGH_LEGS and (why := passthrough_refused(mnt)):
                return why
            if leg.name in IO_URING_LEGS:
                return io_uring_refused(mnt)
    except (RuntimeError, OSError) as e:
        why = str(e).splitlines()[0]
        if ": exit " in why:  # "argv: exit N: stderr" -> "exit N: stderr"
            why = "exit " + why.split(": exit ", 1)[1]
        return f"mount failed: {why[:200]}"
    return None


def _data_path(mnt: Path) -> dict[str, object] | None:
    """What `astrid-fs status --json` says of the mount at `mnt` (data path
    and transport), or None when it reports no session."""
    prog = astrid_fs_program()
    env = dict(os.environ, ASTRID_HOME=str(mnt.parent / "home"))
    proc = subprocess.run([str(prog), "status", "--json"], capture_output=True, text=True,
                          env=env)
    for row in json.loads(proc.stdout or "{}").get("sessions", []):
        path: dict[str, object] = row.get("data_path") or {}
        return path
    return None


def passthrough_refused(mnt: Path) -> str | None:
    """None if the astrid-fs mount at `mnt` serves files by passthrough."""
    (mnt / "big").open("rb").close()  # the daemon asks the kernel at the first open
    path = _data_path(mnt)
    if path is None:
        return "no session reported"
    if path.get("data_path") == "passthrough":
        return None
    return str(path.get("reason", "no data path reported"))


def io_uring_refused(mnt: Path) -> str | None:
    """None if the astrid-fs mount at `mnt` takes requests over io_uring."""
    path = _data_path(mnt)
    if path is None:
        return "no session reported"
    transport = str(path.get("transport", "no transport reported"))
    return None if transport == "io_uring" else transport
