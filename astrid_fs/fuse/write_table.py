"""The shim's write table (native/fuse_shim.c, part 9): WRITEs answered in C.

A by-inode WRITE (the kernel's no_open mode) of an inode the table names is
written by the shim straight from libfuse's buffer to the fd it names, and
answered without Python: no bytes object, no trio task, no handler. The
table holds exactly the read-write fds `overlay/files.py` keeps on upper
files (or on the unnamed copy of a file removed while open); files.py adds
an entry when it opens such an fd and takes it back before it closes or
replaces one, so the shim never writes to a closed (or reused) fd number.
What is not in the table, a lower file's first write (which copies it up)
above all, goes to Python as before.

Shim version 8 also drains (part 10): while requests keep coming that C
answers (these WRITEs, the kernel's `security.capability` probe before each
write), the shim answers them inside pyfuse3's receive call, waiting up to
200 us for the next, so an append to an upper file costs no trio turn.

Threading: libfuse calls the WRITE handler on pyfuse3's trio thread, which
is also the only thread that changes the table; the shim locks anyway.
"""

from __future__ import annotations

import ctypes
from typing import Any

from astrid_fs.fuse.shim import shim_version

# The shim version that has astrid_wf_set; the one that also drains.
WRITE_TABLE_VERSION = 7
DRAIN_VERSION = 8


class ShimWriteTable:
    """The Python side of the shim's ino -> fd write table."""

    def __init__(self, lib: Any, *, drains: bool) -> None:
        self._lib = lib
        self.drains = drains
        self._lib.astrid_wf_set.argtypes = [ctypes.c_uint64, ctypes.c_int]
        self._lib.astrid_wf_set.restype = ctypes.c_int
        self._lib.astrid_wf_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
        self._lib.astrid_wf_stats.restype = None
        if drains:
            self._lib.astrid_drain_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
            self._lib.astrid_drain_stats.restype = None
            self._lib.astrid_drain_enable(1)

    @classmethod
    def load(cls) -> ShimWriteTable | None:
        """The table of the preloaded shim (draining turned on where the shim
        can); None without a shim that has it."""
        version = shim_version()
        if version < WRITE_TABLE_VERSION:
            return None
        return cls(ctypes.CDLL(None), drains=version >= DRAIN_VERSION)

    def add(self, ino: int, fd: int) -> None:
        """WRITEs of `ino` go to `fd` (read-write, on its upper file)."""
        # -ENOMEM leaves the inode out: its writes then go to Python.
        self._lib.astrid_wf_set(ino, fd)

    def remove(self, ino: int) -> None:
        """WRITEs of `ino` go to the daemon again (before its fd closes)."""
        self._lib.astrid_wf_set(ino, -1)

    def stats(self) -> dict[str, int]:
        """WRITEs the shim answered and the bytes they wrote; requests it
        answered while draining, and how often it then found nothing more."""
        out = (ctypes.c_int64 * 2)()
        self._lib.astrid_wf_stats(out)
        counts = {"writes": int(out[0]), "bytes": int(out[1])}
        if self.drains:
            self._lib.astrid_drain_stats(out)
            counts |= {"drained": int(out[0]), "drain_idle": int(out[1])}
        return counts
