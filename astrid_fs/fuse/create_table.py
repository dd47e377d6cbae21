"""The Python side of the FUSE shim's CREATEs (part 22, shim version 34).

`cp -a`, `tar x`, `git checkout`, pip and compilers make one file after
another; once the misses before each create, the writes and the mode and
time changes after it were answered in C (parts 19-21), the CREATE itself
was the one request per file left to Python. The shim now makes a regular
file in a directory it knows the upper path of (part 19) when this daemon
says the kernel holds no listing of that directory (cache.py `_unlisted`:
made, or changed, since the daemon last listed it), exactly as
namespace.py `create` makes it, and answers. Everything else (a whiteout or
a lower entry of that name, a listed directory, the lower root, a kill
flag, passthrough, any error) stays the daemon's.

What the daemon must then know it learns here, before any request reaches
Python (the shim calls the absorb of lookup_table.py first, and so does the
control socket): the node (`InodeTable.add_created`: the upper-only inode
number, one lookup, the generation the shim gave), the read-write fd as the
inode's own (`OpenFiles.adopt`, as a no-open CREATE keeps it; the shim
already put it in part 9's table), the kept listing (`entries_changed`)
and the file's signature for `keep_pages`. At most 256 creations wait
(each holds an fd); the shim then leaves the next CREATE to the daemon,
which absorbs first, and over io_uring it rings the trio thread's doorbell
at half that, so the trio thread absorbs while the queue threads go on.

Off with `ASTRID_FS_C_CREATE=0`, with passthrough, and wherever the shim's
LOOKUP table does not run (remote trees, stacked lowers).
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
from typing import Any

from astrid_fs.fuse.cache import KernelCache
from astrid_fs.overlay.files import OpenFiles
from astrid_fs.overlay.inodes import InodeTable

log = logging.getLogger(__name__)

ENV = "ASTRID_FS_C_CREATE"
# One creation: parent inode, inode, generation, mtime (ns), fd, name
# length, the name (fuse_shim.c `struct cr_made`).
_MADE = struct.Struct("<QQQqiI256s")
_PENDING = 256  # CR_PENDING


class ShimCreates:
    """Creations the shim made, taken into the daemon's tables."""

    def __init__(self, lib: Any, table: InodeTable, files: OpenFiles,
                 cache: KernelCache, direct: bool) -> None:
        self._lib = lib
        self.table = table
        self.files = files
        self.cache = cache
        self.absorbed = 0
        self._buf = ctypes.create_string_buffer(_MADE.size * _PENDING)
        lib.astrid_cr_enable.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.astrid_cr_enable.restype = ctypes.c_int
        lib.astrid_cr_dir.argtypes = [ctypes.c_uint64, ctypes.c_int]
        lib.astrid_cr_dir.restype = ctypes.c_int
        lib.astrid_cr_take.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.astrid_cr_take.restype = ctypes.c_size_t
        lib.astrid_cr_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
        lib.astrid_cr_stats.restype = None
        cache.unlisted_watch = self._unlisted
        for ino in cache.unlisted_dirs():
            self._unlisted(ino, True)
        lib.astrid_cr_enable(1, int(direct))

    @classmethod
    def enable(cls, files: OpenFiles, cache: KernelCache, *,
               passthrough: bool) -> ShimCreates | None:
        """Let the shim make files; None where it cannot or must not."""
        if os.environ.get(ENV) == "0" or passthrough:
            return None
        lib = ctypes.CDLL(None)
        if not hasattr(lib, "astrid_cr_enable"):
            return None
        return cls(lib, files.ov.table, files, cache, cache.create_direct)

    def _unlisted(self, ino: int, unlisted: bool) -> None:
        # (-ENOMEM leaves a directory out: its CREATEs stay the daemon's)
        self._lib.astrid_cr_dir(ino, int(unlisted))

    def absorb(self) -> None:
        """Take every creation the shim made since the last call."""
        while True:
            n = self._lib.astrid_cr_take(self._buf, _PENDING)
            if not n:
                return
            data = ctypes.string_at(self._buf, n * _MADE.size)  # (what came, not the whole buffer)
            for i in range(n):
                parent, ino, generation, mtime_ns, fd, nlen, name = \
                    _MADE.unpack_from(data, i * _MADE.size)
                name = name[:nlen]
                node = self.table.add_created(ino, parent, name, generation)
                self.files.adopt(node, fd, registered=True)
                if self.cache.entries_changed(parent, name, None):
                    # Cannot happen: the shim makes files only in unlisted
                    # directories, and a listing is the daemon's, after an absorb.
                    log.error("a file made by the shim in a listed directory %d", parent)
                self.cache.created(ino, mtime_ns)
            self.absorbed += n

    def stats(self) -> dict[str, int]:
        """Files the shim made and answered; CREATEs it left to the daemon;
        RELEASEs of handle 0 it answered (a CREATE's handle without
        passthrough, the daemon's or the shim's: the daemon does nothing for
        them, file_ops.py `release`)."""
        out = (ctypes.c_int64 * 3)()
        self._lib.astrid_cr_stats(out)
        return {"made": int(out[0]), "declined": int(out[1]), "released": int(out[2]),
                "absorbed": self.absorbed}
