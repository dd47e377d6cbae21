#!/usr/bin/env python3
"""What a copy into a misaligned buffer costs on this machine: pread of a
page-cached file into 1 MiB buffers that start at several offsets from a
page boundary, and pwrite from such buffers, side by side in one run.

Why it is here: on this project's VMs (AMD EPYC) the kernel's copy to user
memory ran five to six times slower into a buffer at offset 16 than at 0 or
64, and glibc's malloc hands out large blocks at offset 16; the FUSE shim's
buffers now start page-aligned where file data lands (shim version 35,
docs/design/mount.md, "Where file data lands"). Rerun it on another CPU to
see whether the cliff is there.

    .venv/bin/python scripts/bench/copy_align.py            # 1 GiB, 5 runs
    .venv/bin/python scripts/bench/copy_align.py --mib 256 --runs 3

The file is made once under --base and read warm (read once before timing);
each number is the median of --runs passes over the whole file, offsets
interleaved; ratios are to offset 0.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

MIB = 1 << 20
OFFSETS = (0, 16, 64, 4096 + 16)
BUFFERS = 8  # rotated, as a ring's entries are
TIMES = "\u00d7"  # multiplication sign


def make_file(path: Path, mib: int) -> None:
    if path.exists() and path.stat().st_size == mib * MIB:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(MIB)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for _ in range(mib):
            f.write(chunk)
    tmp.replace(path)


def views(offset: int) -> tuple[list[mmap.mmap], list[memoryview]]:
    maps = [mmap.mmap(-1, MIB + 2 * 4096) for _ in range(BUFFERS)]
    for m in maps:
        m.write(b"\1" * len(m))  # touched: no page faults in the timed part
    return maps, [memoryview(m)[offset:offset + MIB] for m in maps]


def timed_pass(call: Callable[[int, list[memoryview], int], int], fd: int, size: int,
               offset: int) -> float:
    """Seconds for `call(fd, [buffer], position)` over `size` bytes in 1 MiB
    steps, the buffers starting `offset` bytes into their pages: os.preadv
    from the page-cached file, or os.pwritev over an existing file's pages
    (the copy alone is timed, not page allocation or writeback)."""
    maps, bufs = views(offset)
    start = time.perf_counter()
    for k, pos in enumerate(range(0, size, MIB)):
        call(fd, [bufs[k % BUFFERS]], pos)
    took = time.perf_counter() - start
    for b in bufs:
        b.release()
    for m in maps:
        m.close()
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024, help="file size (default 1024)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--base", type=Path, default=Path("/tmp/astrid-bench/copy-align"))
    args = ap.parse_args(argv)
    if args.mib < 1 or args.runs < 1:
        print("copy_align: --mib and --runs must be at least 1", file=sys.stderr)
        return 2
    src = args.base / "data"
    make_file(src, args.mib)
    size = args.mib * MIB
    reads: dict[int, list[float]] = {o: [] for o in OFFSETS}
    writes: dict[int, list[float]] = {o: [] for o in OFFSETS}
    # Written into a tmpfs file where there is one (no writeback to wait for).
    shm = Path("/dev/shm")
    out = (shm if shm.is_dir() else args.base) / f"astrid-copy-align-{os.getpid()}"
    fd = os.open(src, os.O_RDONLY)
    wfd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        timed_pass(os.preadv, fd, size, 0)  # warm the page cache
        timed_pass(os.pwritev, wfd, size // 2, 0)  # the output's pages made
        for _ in range(args.runs):
            for o in OFFSETS:
                reads[o].append(timed_pass(os.preadv, fd, size, o))
                writes[o].append(timed_pass(os.pwritev, wfd, size // 2, o))
    finally:
        os.close(fd)
        os.close(wfd)
        out.unlink()
    print(f"{args.mib} MiB, {args.runs} runs, medians; {os.cpu_count()} CPUs; "
          f"load {os.getloadavg()[0]:.1f}")
    print("| buffer offset | pread into it (page cache) "
          "| pwrite from it (half the size, over tmpfs pages) |")
    print("|---|---|---|")
    r0, w0 = statistics.median(reads[0]), statistics.median(writes[0])
    for o in OFFSETS:
        r, w = statistics.median(reads[o]), statistics.median(writes[o])
        print(f"| {o} | {r * 1e3:.0f} ms ({r / r0:.2f}{TIMES}) "
              f"| {w * 1e3:.0f} ms ({w / w0:.2f}{TIMES}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
