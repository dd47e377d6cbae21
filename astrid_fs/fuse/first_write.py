"""A file's first WRITE and first READ answered in C (native/fuse_shim.c, part 14).

A by-inode WRITE of an inode without a writable fd in the shim's table
(fuse/write_table.py) used to go to the write handler: a lower file's first
write, which copies it up, or an upper file whose fd the LRU closed. Each
cost a turn of pyfuse3's trio loop on top of the copy-up itself (lock
hand-offs between its reader tasks, epoll, a task per request), about as
much CPU as the copy-up. Now the shim calls `FirstWrites.prepare` for such
an inode, synchronously, inside its receive call: the same first step as the
handler (`OpenFiles.inode_fd(node, write=True)`: the copy-up, the read-write
fd registered), after which the shim writes the data itself, its suid/sgid
kill (part 13) included.

The same for a by-inode READ of an inode without an fd in the table (shim
version 13): a file the shim's own lookups did not find (in a directory with
upper entries, an upper file, one whose fd the LRU closed) used to be read
by the read handler first; `prepare` now opens its fd (`inode_fd(node,
write=False)`, the handler's own step) and the shim reads.

`prepare` runs on pyfuse3's trio thread in the middle of the FUSE loop, like
extra_ops.py's callbacks: it never awaits and never raises (ctypes would
print the exception and answer 0). It returns 0 when the inode is ready, 1
to leave the request to the handler, which does what it always did: a
remote file (its fetch and reads run off the loop, in threads), or any error
(which the handler meets again and reports to the caller).
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

from astrid_fs.fuse.shim import shim_version
from astrid_fs.overlay.files import OpenFiles
from astrid_fs.overlay.overlay import Overlay

log = logging.getLogger("astrid_fs.fuse.first_write")

# The shim version whose astrid_cu_set callback prepares READs as well as
# WRITEs (version 12 had WRITEs only, with another signature: not used).
FIRST_WRITE_VERSION = 13
PREPARE_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_int)


class FirstWrites:
    """The callback the shim calls before it answers a first WRITE itself."""

    def __init__(self, overlay: Overlay, files: OpenFiles) -> None:
        self.ov = overlay
        self.files = files
        self._lib: Any = ctypes.CDLL(None)
        self._lib.astrid_cu_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
        self._cb = PREPARE_CB(self.prepare)  # referenced for as long as the mount lives

    @classmethod
    def enable(cls, overlay: Overlay, files: OpenFiles) -> FirstWrites | None:
        """Register the callback (before the mount serves); None with a shim
        older than version 13."""
        if shim_version() < FIRST_WRITE_VERSION:
            return None
        first = cls(overlay, files)
        first._lib.astrid_cu_set(first._cb)
        return first

    def prepare(self, ino: int, write: int) -> int:
        try:
            node = self.ov.table.get(ino)
            # A remote file: the handler fetches (and reads) it off the loop.
            # (The handlers' own tests: write fetches what a copy-up needs,
            # read serves any remote file through its reader.)
            if (self.ov.fetch_for(node, data=True) if write else self.ov.remote_of(node)) \
                    is not None:
                return 1
            self.files.inode_fd(node, write=bool(write))
        except Exception as e:  # the handler meets it again and reports it
            log.debug("first %s of inode %d left to the handler: %r",
                      "write" if write else "read", ino, e)
            return 1
        return 0

    def stats(self) -> dict[str, int]:
        """Inodes prepared for a WRITE the shim then answered, WRITEs left to
        Python; the same for READs."""
        out = (ctypes.c_int64 * 4)()
        self._lib.astrid_cu_stats(out)
        return {"prepared": int(out[0]), "left": int(out[1]),
                "reads_prepared": int(out[2]), "reads_left": int(out[3])}
