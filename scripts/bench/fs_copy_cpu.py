#!/usr/bin/env python3
"""`cp -a` and `tar x` inside a session: wall time and the daemon's CPU, with
no deletions anywhere in the run, native ext4 beside astrid-fs builds.

fs_namespace.py deletes in every round, and on this project's VMs (ext4
without a journal) creates right after many deletions are slower by more
than the differences between builds; this run never deletes until it ends.
Run as root (mounts):

    .venv/bin/python scripts/bench/fs_copy_cpu.py --runs 3
    # builds or settings side by side, interleaved (NAME=VAR=VALUE[,VAR=VALUE]):
    .venv/bin/python scripts/bench/fs_copy_cpu.py --variant shim33=ASTRID_FS_SHIM=/tmp/shim33.so
        --variant py-create=ASTRID_FS_C_CREATE=0

Each run: a fresh lower holding a copy of fs_namespace.py's `src0` (2,000
files by default), a fresh mount of it (the default data path: io_uring) or,
for native, a fresh directory; `find` over it first (an agent that walked the
tree), then `cp -a src copy` and `tar -xf src2.tar --no-same-owner -C copy`.
The daemon's CPU is the sum over its threads (`/proc/PID/task/*/schedstat`).
On ext4 without a journal it first waits out the last mass deletion of its
own or of fs.py's (fs_dataset.py `settle`); deletions by others it cannot see.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fs_dataset import journal_less_ext4, removed, run, settle
from fs_namespace import build

WORKLOADS = ("cp -a", "tar x")


def daemon_cpu(pid: int) -> float:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            continue  # (a thread that ended meanwhile)
    return total / 1e9


def daemon_pid(mnt: Path) -> int:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"astrid_fs.fuse.daemon" in cmd and str(mnt).encode() in cmd:
            return int(pid)
    raise RuntimeError(f"no daemon for {mnt}")


def one(name: str, env: dict[str, str] | None, base: Path, data: Path, n: int
        ) -> dict[str, tuple[float, float | None]]:
    """(wall, daemon CPU or None) per workload, on a fresh view."""
    top = base / f"{n}-{name}"
    lower, home, mnt = top / "lower", top / "home", top / "mnt"
    for d in (lower, home, mnt):
        d.mkdir(parents=True)
    run(["cp", "-a", str(data / "src0"), str(lower / "src")])
    pid = None
    root = lower
    if env is not None:
        run(["astrid-fs", "-q", "mount", "--lower", str(lower), "--session", "s", str(mnt)],
            env={**os.environ, "ASTRID_HOME": str(home), **env})
        root, pid = mnt, daemon_pid(mnt)
    try:
        run(["find", str(root), "-printf", ""])
        os.sync()
        steps = [("cp -a", ["cp", "-a", str(root / "src"), str(root / "copy")]),
                 ("tar x", ["tar", "-xf", str(data.parent / "src2.tar"), "--no-same-owner",
                            "-C", str(root / "copy")])]
        out: dict[str, tuple[float, float | None]] = {}
        for w, argv in steps:
            c0 = daemon_cpu(pid) if pid else 0.0
            t0 = time.perf_counter()
            subprocess.run(argv, check=True)
            wall = time.perf_counter() - t0
            out[w] = (wall, daemon_cpu(pid) - c0 if pid else None)
        return out
    finally:
        if env is not None:
            run(["astrid-fs", "-q", "umount", str(mnt)],
                env={**os.environ, "ASTRID_HOME": str(home)})


def span(xs: list[float]) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f} s" if len(xs) > 1 else f"{xs[0]:.2f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--base", default="/tmp/astrid-bench-ns")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=VAR=VALUE[,...]")
    ap.add_argument("--no-settle", action="store_true",
                    help="do not wait out the last mass deletion of this or fs.py's bench")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("fs_copy_cpu.py: run as root (mounts)", file=sys.stderr)
        return 2
    legs: dict[str, dict[str, str] | None] = {"native": None, "astrid-fs": {}}
    for spec in args.variant:
        name, _, pairs = spec.partition("=")
        try:
            legs[name] = dict(p.split("=", 1) for p in pairs.split(","))
        except ValueError:
            print(f"fs_copy_cpu.py: bad variant {spec!r}: want NAME=VAR=VALUE[,VAR=VALUE]",
                  file=sys.stderr)
            return 2
    base = Path(args.base)
    data = base / "data"
    build(data, args.files)
    scratch = base / "copy-cpu"
    if scratch.exists():
        removed(base, scratch)
    if journal_less_ext4(base) and not args.no_settle:
        for deleter in (base, Path("/tmp/astrid-bench")):  # (this bench's, fs.py's default)
            settle(deleter)
    load = os.getloadavg()[0]
    res = {name: {w: ([], []) for w in WORKLOADS} for name in legs}  # type: ignore[var-annotated]
    counter = itertools.count()
    try:
        for _ in range(args.runs):
            for name, env in legs.items():
                for w, (wall, cpu) in one(name, env, scratch, data, next(counter)).items():
                    res[name][w][0].append(wall)
                    if cpu is not None:
                        res[name][w][1].append(cpu)
    finally:
        removed(base, scratch)
    print(f"{args.files:,} files, {args.runs} runs each, interleaved, no deletions; load "
          f"average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n")
    print("| | " + " | ".join(f"{w} wall | {w} daemon CPU" for w in WORKLOADS) + " |")
    print("|---" * (2 * len(WORKLOADS) + 1) + "|")
    native = res["native"]
    for name in legs:
        cells = []
        for w in WORKLOADS:
            walls, cpus = res[name][w]
            ratio = "" if name == "native" else \
                f" ({statistics.median(walls) / statistics.median(native[w][0]):.2f}\u00d7)"
            cells += [span(walls) + ratio, span(cpus) if cpus else ""]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
