"""The copy-up threads library (native/copyup_threads.c), loaded with ctypes.

The job a copy-up hands off, unnamed files made ahead (tmpfile.py), runs
in a C thread that never takes the GIL: as a Python thread it cost the
thread answering requests more in GIL hand-overs than it saved
(docs/benchmarks.md). It works however quick the disk is (since 2026-12-05:
over io_uring a copy-up that made its own file was 8-19 % slower in three
A/Bs of four, the trio thread making it while the other CPU idled);
`ASTRID_FS_COPYUP_THREADS=adaptive` has it work only while making a file is
slow (the library's header says how that is told), the default until then.
scripts/setup.sh builds the library; without it (or with
`ASTRID_FS_COPYUP_THREADS=0`) files are made ahead by a Python thread.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Any

LIB = Path(__file__).with_name("native") / "libastrid_copyup_threads.so"
ENV = "ASTRID_FS_COPYUP_THREADS"
# The library version this code needs: 3 makes its files read-write (an older
# one's write-only files would fail the first READ through the inode fd).
VERSION = 3
_I64P = ctypes.POINTER(ctypes.c_int64)


@functools.lru_cache(maxsize=1)
def lib() -> Any | None:
    """The loaded library, or None (not built, older than its source, of
    another version, or turned off)."""
    if os.environ.get(ENV) == "0":
        return None
    source = LIB.with_name("copyup_threads.c")
    if not LIB.is_file() or (source.exists()
                             and LIB.stat().st_mtime < source.stat().st_mtime):
        return None  # (setup.sh builds it)
    try:
        so = ctypes.CDLL(str(LIB))
    except OSError:
        return None
    so.astrid_copyup_threads_version.restype = ctypes.c_int
    if so.astrid_copyup_threads_version() != VERSION:
        return None
    so.astrid_ahead_start.argtypes = [ctypes.c_char_p, ctypes.c_int]
    so.astrid_ahead_start.restype = ctypes.c_void_p
    for name in ("astrid_ahead_take", "astrid_ahead_resume", "astrid_ahead_stop"):
        getattr(so, name).argtypes = [ctypes.c_void_p]
    so.astrid_ahead_wait_full.argtypes = [ctypes.c_void_p, ctypes.c_int]
    so.astrid_ahead_stats.argtypes = [ctypes.c_void_p, _I64P]
    so.astrid_make_note.argtypes = [ctypes.c_int64]
    so.astrid_make_stats.argtypes = [_I64P]
    so.astrid_copyup_mode.argtypes = [ctypes.c_int]
    so.astrid_copyup_mode(default_mode())
    return so


def default_mode() -> int:
    """The library's mode for this process: 1, the thread always works (the
    default); 0 with `ASTRID_FS_COPYUP_THREADS=adaptive`, only while making
    a file is slow."""
    return 0 if os.environ.get(ENV) == "adaptive" else 1


def make_stats() -> dict[str, Any]:
    """The moving average of making an unnamed file (us) and whether the
    threads work now."""
    so = lib()
    if so is None:
        return {}
    out = (ctypes.c_int64 * 2)()
    so.astrid_make_stats(out)
    return {"make_us": round(out[0] / 1000, 1), "threads_working": bool(out[1])}


def counters(fn: Any, handle: int, n: int) -> list[int]:
    """The `n` int64 counters a stats function fills."""
    out = (ctypes.c_int64 * n)()
    fn(handle, out)
    return [int(v) for v in out]
