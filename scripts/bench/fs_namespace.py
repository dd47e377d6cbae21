#!/usr/bin/env python3
"""Copying and deleting directories in a project, as an agent does all day
(`cp -a src backup`, `rm -rf build node_modules`): native ext4, kernel
overlayfs, fuse-overlayfs and astrid-fs in one run, ratios to native.

Run as root (mounts):

    .venv/bin/python scripts/bench/fs_namespace.py                 # 2,000 files, 3 rounds
    .venv/bin/python scripts/bench/fs_namespace.py --files 10000 --rounds 5
        --legs native,kernel,astrid-fs-uring
    # an A/B of two builds of the FUSE shim, legs interleaved:
    .venv/bin/python scripts/bench/fs_namespace.py --legs native,astrid-fs-uring
        --variant shim29=astrid-fs-uring,ASTRID_FS_SHIM=/tmp/shim29.so

Workloads, each round on a fresh view of a lower holding three directories
of --files small files (ten subdirectories each; native: a fresh copy):

    cp -a in           `cp -a src0 copy`: a project directory copied inside the view
    tar x in           a tarball of such a directory unpacked into the view, as a
                       user unpacks (`--no-same-owner`: modes and times, no chown)
    rm -rf project     `rm -rf src1`: a project directory deleted (whiteouts)
    rm -rf own         `rm -rf copy`: the session's own files deleted

The view's metadata is warmed first (`find`, as an agent that walked the
tree has it). Legs run in a rotated order each round, so each meets the
same state of the disk (this project's VMs' ext4 has no journal: creates
right after many deletions are slower, docs/benchmarks.md); the ratio is of
medians. Parts: fs_legs.py (mounting), fs_dataset.py (helpers).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

from fs_dataset import log, run
from fs_legs import LEG_TITLE, LEGS, Leg, add_variant, probe

WORKLOADS = ["cp -a in", "tar x in", "rm -rf project", "rm -rf own"]


def build(data: Path, files: int) -> None:
    """Three directories of `files` small files, once per size."""
    stamp = data / ".complete"
    if stamp.exists() and stamp.read_text() == f"{files} v3":
        return
    shutil.rmtree(data, ignore_errors=True)
    (data / "copyup").mkdir(parents=True)  # (fs_legs copies it for native)
    (data / "big").write_bytes(b"probe")  # (fs_legs.probe looks for it)
    rnd = random.Random(7)
    for d in range(3):
        for i in range(files):
            p = data / f"src{d}" / f"sub{i % 10}" / f"f{i:05d}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(rnd.randbytes(rnd.randint(100, 3000)))
    # (beside the data, not in it: native copies the data, the views show it)
    run(["tar", "-cf", str(data.parent / "src2.tar"), "-C", str(data), "src2"])
    os.sync()
    stamp.write_text(f"{files} v3")


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    run(argv)
    return time.perf_counter() - t


def one_round(leg: Leg) -> dict[str, float]:
    with leg.view() as (_read_root, root):
        if leg.name == "native":
            for d in ("src0", "src1"):
                shutil.copytree(leg.data / d, root / d, symlinks=True)
        run(["find", str(root), "-printf", "%s\n"])  # metadata warm
        os.sync()
        out = {"cp -a in": timed(["cp", "-a", str(root / "src0"), str(root / "copy")])}
        os.sync()
        (root / "untar").mkdir()
        out["tar x in"] = timed(["tar", "-xf", str(leg.data.parent / "src2.tar"),
                                 "--no-same-owner", "-C", str(root / "untar")])
        os.sync()
        out["rm -rf project"] = timed(["rm", "-rf", str(root / "src1")])
        os.sync()
        out["rm -rf own"] = timed(["rm", "-rf", str(root / "copy")])
        os.sync()
        return out


def fmt(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--legs", default="native,kernel,fuse-overlayfs,astrid-fs-uring")
    ap.add_argument("--base", default="/tmp/astrid-bench-ns")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=LEG[,VAR=VALUE...]",
                    help="an astrid-fs leg with VAR=VALUE in its environment (fs.py's --variant)")
    args = ap.parse_args()
    wanted = args.legs.split(",")
    for spec in args.variant:
        try:
            wanted.append(add_variant(spec))
        except ValueError as e:
            print(f"fs_namespace.py: {e}", file=sys.stderr)
            return 2
    if os.geteuid() != 0:
        print("fs_namespace.py: run as root (mounts)", file=sys.stderr)
        return 2
    base = Path(args.base)
    data, scratch = base / "data", base / "scratch"
    build(data, args.files)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    legs: list[Leg] = []
    for name in wanted:
        if name not in LEGS and name not in LEG_TITLE:
            print(f"fs_namespace.py: unknown leg {name!r} (one of {', '.join(LEGS)})",
                  file=sys.stderr)
            return 2
        leg = Leg(name, data, scratch)
        why = probe(leg)
        if why:
            log(f"{name}: not available ({why})")
            continue
        legs.append(leg)
    load = os.getloadavg()[0]
    times: dict[str, dict[str, list[float]]] = {leg.name: {w: [] for w in WORKLOADS}
                                                for leg in legs}
    try:
        for r in range(args.rounds):
            order = legs[r % len(legs):] + legs[:r % len(legs)]
            for leg in order:
                log(f"round {r + 1}: {leg.name}")
                for w, t in one_round(leg).items():
                    times[leg.name][w].append(t)
    finally:
        for leg in legs:
            leg.cleanup()
    print(f"{args.files:,} files per directory, {args.rounds} rounds, medians; load average "
          f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n")
    names = [leg.name for leg in legs]
    print("| workload | " + " | ".join(LEG_TITLE.get(n, n) for n in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    native = times.get("native")
    for w in WORKLOADS:
        cells = []
        for n in names:
            med = statistics.median(times[n][w])
            cell = fmt(med)
            if native is not None and n != "native":
                cell += f" ({med / statistics.median(native[w]):.2f}\u00d7)"
            cells.append(cell)
        print(f"| {w} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
