#!/usr/bin/env python3
"""Time one workload set on native ext4, kernel overlayfs, fuse-overlayfs and astrid-fs.

Run as root (mounts, drop_caches):

    .venv/bin/python scripts/bench/fs.py --quick            # small sizes, ~2 minutes
    .venv/bin/python scripts/bench/fs.py --full --write-md  # docs/benchmarks-fs.md, the latest
    .venv/bin/python scripts/bench/fs.py --legs native,astrid-fs --workloads "read cold"
    # an A/B of two builds of the FUSE shim in one run, legs interleaved (one command):
    .venv/bin/python scripts/bench/fs.py --full --legs native,fuse-overlayfs,astrid-fs
        --variant shim21=astrid-fs,ASTRID_FS_SHIM=/tmp/shim21.so --workloads "stat cold"
        --rounds 4
    # on ext4 with a journal, in a loop-mounted image (this VM's root ext4 has none):
    .venv/bin/python scripts/bench/fs.py --full --ext4-image /tmp/ext4j.img
        --base /tmp/astrid-bench-j

Workloads (each leg sees the same data as its lower layer; native reads it directly):

    read cold / warm    sequential read of one big file (1 GiB full), 1 MiB reads;
                        cold = after `sync; echo 3 > /proc/sys/vm/drop_caches`
    write               sequential buffered write of a new file of the same size
                        (1 MiB writes, then close; `sync` after, untimed)
    find cold / warm    `find TREE -name NOMATCH` over ~20k files
    stat cold / warm    `find TREE -printf '%s %m %U %T@'` (lstat of every entry)
    grep cold / warm    `grep -r NEEDLE TREE`
    grep busy           grep cold with a busy loop on every CPU (a build beside it)
    read parallel cold  every file of TREE read by 8 processes at once
                        (`find | xargs -0 -P 8 cat`: a parallel build's reads)
    copy-up             append 1 byte to each of 1,000 lower files (first write)
    append upper        append 1 byte to each of those 1,000 files again (now upper)
    git status first    `git status` in a ~10k-file repository on a fresh mount and
                        after drop_caches (native: after drop_caches)
    git status warm     `git status` again, caches warm

Each number is the median of --runs repetitions (a fresh set of lower files for each
copy-up repetition, a fresh mount for each "first" git status). Ratios are to
native. The data set is built once under --base and reused by later runs.
The astrid-fs leg reports "not available" (and why) when `astrid-fs mount` fails.
The astrid-fs-pt leg mounts with `--passthrough` (FUSE passthrough for upper files,
fuse/passthrough.py); it reports "not available" when the kernel refuses passthrough.
The astrid-fs-uring leg mounts with `--io-uring` (FUSE over io_uring, fuse/io_uring.py);
it reports "not available" when the kernel does not offer it. The astrid-fs-pt-uring
leg mounts with both.
The s3 leg (fs_s3.py) reads one object through astrid-fs, s3fs-fuse and rclone mount
against one local s3rver (installing s3fs and rclone with apt-get if missing).

Parts: fs_dataset.py (sizes, data set), fs_legs.py (mounting), fs_workloads.py
(timing), fs_report.py (table, targets, docs section), fs_s3.py (the S3 leg).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import fs_s3
from bench_host import add_page_reporting_flag, free_page_reporting_off, idle_policy
from fs_dataset import (
    FULL,
    QUICK,
    Sizes,
    build_dataset,
    fs_type,
    is_mounted,
    journal_less_ext4,
    log,
    mount_ext4_image,
    removed,
    settle,
    unmount_ext4_image,
)
from fs_legs import LEG_TITLE, LEGS, REPO, Leg, add_variant, probe
from fs_report import SECTION, markdown, table, write_section
from fs_workloads import WORKLOADS, run_leg

ALL_LEGS = [*LEGS, "s3"]


def with_s3(section: str, s3_md: str) -> str:
    """The fs section with the S3 subsection before its closing 'Run it' line."""
    head, sep, tail = section.rpartition("Run it: ")
    return head + s3_md + "\n" + sep + tail if sep else section + "\n" + s3_md


LATEST_MD = REPO / "docs" / "benchmarks-fs.md"
LATEST_HEADER = (
    "# astrid-fs: the latest full run\n\n"
    "Written by `scripts/bench/fs.py --full --write-md` (or `--from-json FILE --write-md` "
    "for a saved run): the table of its last run, nothing else. What the numbers mean, "
    "what changed between runs and every A/B are in [benchmarks.md](benchmarks.md).\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (default)")
    size.add_argument("--full", action="store_true", help="1 GiB, 20k files, 10k-file repo")
    ap.add_argument("--runs", type=int, help="repetitions per workload (default 5 full, 3 quick)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every leg this many times, legs interleaved (native, kernel, "
                    "..., native, kernel, ...); medians over all rounds' runs (default 1)")
    ap.add_argument("--base", type=Path, default=Path("/tmp/astrid-bench"),
                    help="where the data set and mounts live (default /tmp/astrid-bench)")
    ap.add_argument("--legs", default=",".join(ALL_LEGS),
                    help=f"comma list of {','.join(ALL_LEGS)}")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=LEG[,VAR=VALUE...]",
                    help="one more astrid-fs leg, mounted with VAR=VALUE in its environment, "
                    "e.g. shim21=astrid-fs,ASTRID_FS_SHIM=/tmp/shim21.so (an A/B in one run; "
                    "repeatable)")
    ap.add_argument("--workloads", default="", help="comma list (default: all)")
    ap.add_argument("--json", type=Path, help="write raw times here")
    ap.add_argument("--no-settle", action="store_true",
                    help="do not wait out ext4's recently-deleted window (journal-less "
                    "ext4: creates, copy-up above all, then measure slower)")
    add_page_reporting_flag(ap)
    ap.add_argument("--ext4-image", type=Path, metavar="FILE",
                    help="run on the ext4 file system in FILE (made if missing: a sparse "
                    "image, mkfs.ext4 defaults, so with a journal), loop-mounted at --base "
                    "for the run; see 'On ext4 with a journal' in docs/benchmarks.md")
    ap.add_argument("--from-json", type=Path, metavar="FILE",
                    help="measure nothing: print (and --write-md) the table of a saved --json")
    ap.add_argument("--write-md", nargs="?", const=LATEST_MD, type=Path,
                    metavar="FILE", help=f"replace the '{SECTION}' section of FILE "
                    "(default docs/benchmarks-fs.md, the page of the latest run; the dated "
                    "history in docs/benchmarks.md is written by hand)")
    args = ap.parse_args(argv)

    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        for spec in saved.get("variants", []):
            add_variant(spec)
        sizes = Sizes(**saved["sizes"])
        medians = {leg: {w: statistics.median(t) for w, t in r.items()}
                   for leg, r in saved["times"].items()}
        s3 = saved.get("s3")
        print(table(medians, saved["unavailable"]))
        if s3:
            print(fs_s3.table(s3["medians"], s3["unavailable"]))
        if args.write_md:
            base = Path(saved.get("base", args.base))
            section = markdown(medians, saved["unavailable"], sizes, saved["mode"], base,
                               saved.get("when"), saved.get("load"), saved.get("idle"),
                               saved.get("rounds", 1))
            if s3:
                section = with_s3(section, fs_s3.markdown(s3["medians"], s3["unavailable"],
                                                          sizes))
            write_section(args.write_md, section, LATEST_HEADER)
        return 0

    if os.geteuid() != 0:
        print("fs.py: run as root (it mounts overlays and drops caches)", file=sys.stderr)
        return 2
    mode = "full" if args.full else "quick"
    sizes = FULL if args.full else QUICK
    if args.runs:
        sizes = Sizes(sizes.big_mib, sizes.tree_files, sizes.git_files, sizes.copyup_files,
                      args.runs)
    legs = [x for x in args.legs.split(",") if x]
    bad = [x for x in legs if x not in ALL_LEGS]
    s3_leg = "s3" in legs
    legs = [x for x in legs if x != "s3"]
    if args.rounds < 1:
        print("fs.py: --rounds must be at least 1", file=sys.stderr)
        return 2
    if bad or "native" not in legs:
        print(f"fs.py: --legs must include native and be among {ALL_LEGS}", file=sys.stderr)
        return 2
    try:
        legs += [add_variant(spec) for spec in args.variant]
    except ValueError as e:
        print(f"fs.py: {e}", file=sys.stderr)
        return 2
    only = {w for w in args.workloads.split(",") if w}
    if only - set(WORKLOADS):
        print(f"fs.py: unknown workloads {sorted(only - set(WORKLOADS))}", file=sys.stderr)
        return 2

    base = args.base.resolve()
    if args.ext4_image:
        try:
            mount_ext4_image(args.ext4_image.resolve(), base)
        except (OSError, RuntimeError) as e:
            print(f"fs.py: --ext4-image: {e}", file=sys.stderr)
            return 1
        atexit.register(unmount_ext4_image, base)
    data = base / f"data-{mode}"
    scratch = base / "scratch"
    base.mkdir(parents=True, exist_ok=True)
    no_journal = journal_less_ext4(base)
    log(f"native file system under {base}: {fs_type(base)}"
        f"{' without a journal (--ext4-image gives one with a journal)' if no_journal else ''}; "
        f"idle CPUs: {idle_policy()}")
    build_dataset(data, sizes)
    if scratch.exists():
        leftovers = [m for m in scratch.glob("*/mnt") if is_mounted(m)]
        if leftovers:
            print(f"fs.py: still mounted from an earlier run: {leftovers}", file=sys.stderr)
            return 1
        removed(base, scratch)
    if no_journal and not args.no_settle:
        settle(base)
    scratch.mkdir()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    with free_page_reporting_off(args.keep_page_reporting) as host:
        load_before = os.getloadavg()[0]
        results: dict[str, dict[str, list[float]]] = {}
        unavailable: dict[str, str] = {}
        s3_medians: dict[str, dict[str, float]] = {}
        s3_unavailable: dict[str, str] = {}
        s3_samples: fs_s3.Samples = {}
        active: list[Leg] = []
        try:
            for name in legs:
                leg = Leg(name, data, scratch)
                active.append(leg)
                why = probe(leg)
                if why:
                    log(f"{name}: not available: {why}")
                    unavailable[name] = why
            for rnd in range(args.rounds):
                for leg in active:
                    name = leg.name
                    if name in unavailable:
                        continue
                    log(f"{name}:" if args.rounds == 1
                        else f"{name} (round {rnd + 1}/{args.rounds}):")
                    for w, times in run_leg(leg, sizes, only).items():
                        results.setdefault(name, {}).setdefault(w, []).extend(times)
            if s3_leg:
                s3_medians, s3_unavailable, s3_samples = fs_s3.run_s3(base, sizes,
                                                                      "astrid-fs-pt" in legs)
        finally:
            for leg in active:
                leg.cleanup()
            removed(base, scratch)

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end (1-minute)"
    idle = f"{idle_policy()}; {host}"
    medians = {leg: {w: statistics.median(t) for w, t in r.items()} for leg, r in results.items()}
    print(table(medians, unavailable))
    for name, why in unavailable.items():
        print(f"\n{LEG_TITLE[name]}: not available ({why})")
    s3_md = ""
    if s3_leg:
        print("\n" + fs_s3.table(s3_medians, s3_unavailable))
        s3_md = fs_s3.markdown(s3_medians, s3_unavailable, sizes)
    if args.json:
        saved = {"sizes": sizes.__dict__, "mode": mode, "rounds": args.rounds, "times": results,
                 "variants": args.variant,
                 "unavailable": unavailable, "base": str(base), "when": when, "load": load,
                 "native_fs": fs_type(base), "idle": idle}
        if s3_leg:
            saved["s3"] = {"medians": s3_medians, "unavailable": s3_unavailable,
                           "samples": s3_samples}
        args.json.write_text(json.dumps(saved, indent=1))
    if args.write_md:
        section = markdown(medians, unavailable, sizes, mode, base, when, load, idle,
                           args.rounds)
        write_section(args.write_md, with_s3(section, s3_md) if s3_md else section,
                      LATEST_HEADER)
        log(f"wrote section '{SECTION}' of {args.write_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
