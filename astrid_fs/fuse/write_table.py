"""The shim's fd table (native/fuse_shim.c, parts 9 and 10): READs and WRITEs
answered in C.

A by-inode READ or WRITE (the kernel's no_open mode) of an inode the table
names is served by the shim from the fd it names and answered without
Python: no bytes object, no trio task, no handler. A READ is one pread into
the shim's buffer (short only at EOF, as the daemon's own), a WRITE goes
straight from libfuse's buffer to the fd. The table holds the inode fds
`overlay/files.py` keeps, each marked with whether WRITEs may go there (a
read-write fd on an upper file, or on the unnamed copy of a file removed
while open); files.py adds an entry when it opens an fd and takes it back
before it closes or replaces one (and before a lower file's copy-up), so the
shim never touches a closed (or reused) fd number and a reader follows a
copy-up. What is not in the table goes to Python as before: a file's first
READ (which opens its fd), a lower file's first write (which copies it up),
remote files (read through `Reader`s, never an inode fd).

Versions: 7 has the write table, 8 also drains (part 10: while requests keep
coming that C answers, the shim answers them inside pyfuse3's receive call,
waiting up to 200 us for the next, so a stream of them costs no trio turn),
9 also holds read-only fds and answers (and drains) READs. With 7 or 8 only
the writable fds are added.

Threading: libfuse calls the READ and WRITE handlers on pyfuse3's trio
thread, which is also the only thread that changes the table; the shim
locks anyway.
"""

from __future__ import annotations

import ctypes
from typing import Any

from astrid_fs.fuse.shim import shim_version

# The shim version that has astrid_wf_set; the one that also drains; the one
# whose table also serves READs (astrid_fd_set, astrid_fd_stats).
WRITE_TABLE_VERSION = 7
DRAIN_VERSION = 8
READ_TABLE_VERSION = 9
# The shim version whose READs that would wait on the disk go to reader
# threads (part 17, astrid_ro_stats).
READ_THREADS_VERSION = 27
# The shim version that reads layer files ahead of a sequential reader
# (part 18, astrid_ra_stats).
READ_AHEAD_VERSION = 28
# The shim version whose read-ahead is read by a thread (astrid_ra_thread_stats).
READ_AHEAD_THREAD_VERSION = 29


class ShimWriteTable:
    """The Python side of the shim's ino -> fd table."""

    def __init__(self, lib: Any, *, drains: bool, serves_reads: bool,
                 read_threads: bool = False, read_ahead: bool = False,
                 read_ahead_thread: bool = False) -> None:
        self._lib = lib
        self.drains = drains
        self.serves_reads = serves_reads
        self.read_threads = read_threads
        self.read_ahead = read_ahead
        self.read_ahead_thread = read_ahead_thread
        # Each counter group the shim has: fn(int64_t *out).
        for name, present in (("astrid_wf_stats", True), ("astrid_fd_stats", serves_reads),
                              ("astrid_ro_stats", read_threads), ("astrid_ra_stats", read_ahead),
                              ("astrid_ra_thread_stats", read_ahead_thread),
                              ("astrid_drain_stats", drains)):
            if present:
                getattr(lib, name).argtypes = [ctypes.POINTER(ctypes.c_int64)]
                getattr(lib, name).restype = None
        if serves_reads:
            self._lib.astrid_fd_set.argtypes = [ctypes.c_uint64, ctypes.c_int, ctypes.c_int]
            self._lib.astrid_fd_set.restype = ctypes.c_int
        self._lib.astrid_wf_set.argtypes = [ctypes.c_uint64, ctypes.c_int]
        self._lib.astrid_wf_set.restype = ctypes.c_int
        if drains:
            self._lib.astrid_drain_enable(1)

    @classmethod
    def load(cls) -> ShimWriteTable | None:
        """The table of the preloaded shim (draining turned on where the shim
        can); None without a shim that has it."""
        version = shim_version()
        if version < WRITE_TABLE_VERSION:
            return None
        return cls(ctypes.CDLL(None), drains=version >= DRAIN_VERSION,
                   serves_reads=version >= READ_TABLE_VERSION,
                   read_threads=version >= READ_THREADS_VERSION,
                   read_ahead=version >= READ_AHEAD_VERSION,
                   read_ahead_thread=version >= READ_AHEAD_THREAD_VERSION)

    def add(self, ino: int, fd: int, *, writes: bool) -> None:
        """READs of `ino` are read from `fd`, and WRITEs written there if
        `writes` (read-write, on its upper file)."""
        # -ENOMEM leaves the inode out: its I/O then goes to Python.
        if self.serves_reads:
            self._lib.astrid_fd_set(ino, fd, int(writes))
        elif writes:
            self._lib.astrid_wf_set(ino, fd)

    def remove(self, ino: int) -> None:
        """READs and WRITEs of `ino` go to the daemon again (before its fd
        closes)."""
        self._lib.astrid_wf_set(ino, -1)

    def stats(self) -> dict[str, int]:
        """WRITEs the shim answered and the bytes they wrote (READs and the
        bytes they read, from version 9); READs the trio thread gave its
        reader threads, answered from the page cache without waiting, and
        read inline while the threads ran (nothing else waited, or the file
        system cannot say; part 17, version 27), and how many reader threads
        run; how often it asked the kernel to read a layer file ahead of a
        sequential reader, and how many bytes (part 18, version 28); the
        read-ahead thread's opens kept, ranges waiting for it or being read,
        ranges it read and ranges asked by POSIX_FADV_WILLNEED instead
        (version 29); requests it answered while
        draining, and how often it then found nothing more; how often the
        wait for the next one found it while spinning, and did not (shim
        version 18); SETATTRs of upper files it did and left to the daemon
        (version 32, part 20), and COPY_FILE_RANGEs (version 33, part 21;
        declines are counted where tried: a queue thread's, then the trio
        thread's); GETATTRs of such files it answered from their fd
        (`getattrs`, version 34)."""
        out = (ctypes.c_int64 * 4)()
        if self.serves_reads:
            self._lib.astrid_fd_stats(out)
        else:
            self._lib.astrid_wf_stats(out)
        counts = {"writes": int(out[0]), "bytes": int(out[1])}
        if self.serves_reads:
            counts |= {"reads": int(out[2]), "read_bytes": int(out[3])}
        if self.read_threads:
            self._lib.astrid_ro_stats(out)
            counts |= {"reads_to_threads": int(out[0]), "reads_cached": int(out[1]),
                       "reads_inline": int(out[2]), "read_threads": int(out[3])}
        if self.read_ahead:
            self._lib.astrid_ra_stats(out)
            counts |= {"read_aheads": int(out[0]), "read_ahead_bytes": int(out[1])}
        if self.read_ahead_thread:
            self._lib.astrid_ra_thread_stats(out)
            counts |= {"read_ahead_opens": int(out[0]), "read_ahead_queued": int(out[1]),
                       "read_aheads_by_thread": int(out[2]),
                       "read_aheads_fadvised": int(out[3])}
        if self.drains:
            self._lib.astrid_drain_stats(out)
            counts |= {"drained": int(out[0]), "drain_idle": int(out[1]),
                       "spin_hits": int(out[2]), "spin_misses": int(out[3])}
        if hasattr(self._lib, "astrid_sa_stats"):  # (version 32: part 20)
            self._lib.astrid_sa_stats(out)
            counts |= {"setattrs": int(out[0]), "setattrs_declined": int(out[1])}
            if hasattr(self._lib, "astrid_cr_enable"):  # (version 34)
                counts["getattrs"] = int(out[2])
        if hasattr(self._lib, "astrid_cf_stats"):  # (version 33: part 21)
            self._lib.astrid_cf_stats(out)
            counts |= {"copies": int(out[0]), "copies_declined": int(out[1])}
        return counts
