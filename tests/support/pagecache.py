"""What a file's page cache is made of: large folios or single pages
(/proc/self/pagemap and /proc/kpageflags, root). Used by tests/fs and
scripts/bench/page_cache.py."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16


def folios(path: Path, length: int) -> tuple[int, int, int]:
    """(large folio heads, their tail pages, single pages) of the first
    `length` bytes of `path`'s page cache, as a read-only mapping sees it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, length, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        for off in range(0, length, mmap.PAGESIZE):
            mm[off]  # map each page (already cached)
        maps = Path("/proc/self/maps").read_text().splitlines()
        base = next(int(line.split("-")[0], 16) for line in maps if line.endswith(str(path)))
        heads = tails = single = 0
        with open("/proc/self/pagemap", "rb") as pagemap, open("/proc/kpageflags", "rb") as kpf:
            for page in range(length // mmap.PAGESIZE):
                pagemap.seek((base // mmap.PAGESIZE + page) * 8)
                entry = struct.unpack("<Q", pagemap.read(8))[0]
                if not entry >> 63:  # not present
                    continue
                kpf.seek((entry & ((1 << 55) - 1)) * 8)
                flags = struct.unpack("<Q", kpf.read(8))[0]
                if flags >> KPF_COMPOUND_HEAD & 1:
                    heads += 1
                elif flags >> KPF_COMPOUND_TAIL & 1:
                    tails += 1
                else:
                    single += 1
    finally:
        mm.close()
    return heads, tails, single


def average(heads: int, tails: int, single: int) -> float:
    """The average folio size, in pages, of `folios`' counts."""
    return (heads + tails + single) / max(heads + single, 1)


def pages_per_folio(path: Path, length: int) -> float:
    """The average folio size, in pages, of `path`'s first `length` bytes."""
    return average(*folios(path, length))
