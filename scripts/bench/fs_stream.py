#!/usr/bin/env python3
"""Streams of requests answered in C, with the drain spinning or not (shim 18).

Run as root, after scripts/bench/fs.py has built its data set (same --base,
--quick/--full):

    .venv/bin/python scripts/bench/fs_stream.py --full --spins 0,60 --rounds 2

For each round and each `ASTRID_FS_DRAIN_SPIN_US` value, interleaved, one
fresh astrid-fs mount (daemon path) over the data set: `grep -r` cold, the
same grep right after (a GETATTR per file read, answered in C), a stat walk,
three passes of appends to upper files (one WRITE each), and native's times
for the same steps first. Prints one row per mount; the wall times are the
measure (nothing here asserts a time). The spin's counters say how often the
drain found the next request while spinning.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fs_dataset
import fs_legs
import fs_requests
import fs_workloads

APPENDS = 500


def spin_counts(control: str) -> str:
    counts = fs_requests.stats(control)
    return f"spin hits {counts.get('c.spin_hits', '-')}, misses {counts.get('c.spin_misses', '-')}"


def steps(root: Path, wroot: Path) -> list[tuple[str, Callable[[], None]]]:
    tree = root / "tree"
    grep = fs_workloads.cmd(["grep", "-r", fs_dataset.NEEDLE, str(tree)])
    stat_walk = fs_workloads.cmd(["find", str(tree), "-printf", "%s %m %U %T@\n"])
    appends = wroot / "stream-appends"

    def append_pass() -> None:
        for i in range(APPENDS):
            fd = os.open(appends / f"f{i}", os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, b"x")
            finally:
                os.close(fd)

    def prepare_appends() -> None:
        appends.mkdir(exist_ok=True)
        for i in range(APPENDS):
            (appends / f"f{i}").write_bytes(b"")

    def grep_cold() -> None:
        fs_dataset.drop_caches()
        grep()

    return [("prepare", prepare_appends), ("grep cold", grep_cold), ("grep after", grep),
            ("stat walk", stat_walk), ("appends 1", append_pass), ("appends 2", append_pass),
            ("appends 3", append_pass)]


def measure(leg: fs_legs.Leg) -> tuple[dict[str, float], str]:
    with leg.view() as (root, wroot):
        times = {}
        for name, fn in steps(root, wroot):
            t = fs_workloads.timed(fn)
            if name != "prepare":
                times[name] = t * 1000
        counts = "" if leg.name == "native" else spin_counts(fs_legs.control_socket(wroot))
    return times, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--base", type=Path, default=Path("/tmp/astrid-bench"))
    ap.add_argument("--spins", default="0,60", help="ASTRID_FS_DRAIN_SPIN_US values (µs)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("fs_stream.py: run as root", file=sys.stderr)
        return 2
    mode = "full" if args.full else "quick"
    data = args.base.resolve() / f"data-{mode}"
    fs_dataset.build_dataset(data, fs_dataset.FULL if args.full else fs_dataset.QUICK)
    scratch = args.base.resolve() / "scratch-stream"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        spins = [int(s) for s in args.spins.split(",")]
    except ValueError:
        print(f"fs_stream.py: --spins takes integers, not {args.spins!r}", file=sys.stderr)
        return 2
    cols = ["grep cold", "grep after", "stat walk", "appends 1", "appends 2", "appends 3"]
    print("| mount | " + " | ".join(f"{c} (ms)" for c in cols) + " | drain |")
    print("|---" * (len(cols) + 2) + "|")
    native = fs_legs.Leg("native", data, scratch)
    astrid = fs_legs.Leg("astrid-fs", data, scratch)
    saved = os.environ.get("ASTRID_FS_DRAIN_SPIN_US")
    try:
        for r in range(1, args.rounds + 1):
            times, _ = measure(native)
            print(f"| native, round {r} | " + " | ".join(f"{times[c]:.0f}" for c in cols) + " | |")
            for spin in spins:
                os.environ["ASTRID_FS_DRAIN_SPIN_US"] = str(spin)
                times, counts = measure(astrid)
                print(f"| spin {spin} µs, round {r} | "
                      + " | ".join(f"{times[c]:.0f}" for c in cols) + f" | {counts} |",
                      flush=True)
    finally:
        if saved is None:
            os.environ.pop("ASTRID_FS_DRAIN_SPIN_US", None)
        else:
            os.environ["ASTRID_FS_DRAIN_SPIN_US"] = saved
        native.cleanup()
        astrid.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
