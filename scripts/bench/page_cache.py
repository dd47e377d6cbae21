"""Warm reads against the size of the page cache's folios (root).

For each file: drop the caches, fill its page cache (a plain sequential read,
whose readahead may make large folios, or `POSIX_FADV_WILLNEED` first, whose
forced readahead makes single pages), read it twice more, then time warm
reads; and count its folios through a mapping (/proc/self/pagemap and
/proc/kpageflags). Give the same file natively and through a mount to see
what the mount's page cache is made of (docs/benchmarks.md, "Read warm is the
page cache's folio size").

    sudo .venv/bin/python scripts/bench/page_cache.py \\
        /tmp/astrid-bench/data-full/big MNT/big
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time
from pathlib import Path

from bench_host import add_page_reporting_flag, steady_host

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.pagecache import average, folios

MIB = 1 << 20
WINDOW = 8 * MIB


def read_all(path: Path) -> None:
    buf = bytearray(MIB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def fill(path: Path, how: str) -> None:
    if how == "fadvise":
        fd = os.open(path, os.O_RDONLY)
        try:
            for off in range(0, os.fstat(fd).st_size, WINDOW):
                os.posix_fadvise(fd, off, WINDOW, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
    read_all(path)


def one(path: Path, how: str, runs: int, sample: int) -> str:
    drop_caches()
    fill(path, how)
    read_all(path)
    read_all(path)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        read_all(path)
        times.append((time.perf_counter() - t0) * 1000)
    heads, tails, single = folios(path, min(sample, path.stat().st_size) & ~(mmap.PAGESIZE - 1))
    avg = average(heads, tails, single)
    return (f"| {path} | {how} | {statistics.median(times):.0f} ms "
            f"({min(times):.0f}-{max(times):.0f}) | {heads} | {single} | {avg:.1f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--runs", type=int, default=3, help="warm reads timed per file and fill")
    ap.add_argument("--fills", default="read,fadvise",
                    help="comma list of read (a plain read fills) and fadvise "
                         "(POSIX_FADV_WILLNEED first)")
    ap.add_argument("--sample-mib", type=int, default=64,
                    help="how much of each file's page cache to count folios of")
    add_page_reporting_flag(ap)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("page_cache.py: needs root (drop_caches, /proc/kpageflags)", file=sys.stderr)
        return 2
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        print(f"page_cache.py: not a regular file: {', '.join(missing)}", file=sys.stderr)
        return 2
    with steady_host(args.keep_page_reporting) as host:
        print(host)
        print("\n| file | filled by | warm read (median, range) | large folios "
              "| single pages | pages per folio |\n|---|---|---|---|---|---|")
        for how in args.fills.split(","):
            for path in args.files:
                print(one(path.resolve(), how, args.runs, args.sample_mib * MIB), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
