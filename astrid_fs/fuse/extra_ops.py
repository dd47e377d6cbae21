"""LSEEK, FALLOCATE and COPY_FILE_RANGE: the FUSE ops pyfuse3 has no handlers for.

The shim (native/fuse_shim.c, version 5) adds them to libfuse's operation
table and forwards each to a callback registered here before the mount.
libfuse calls op handlers on pyfuse3's trio thread, so a callback runs
there, synchronously, in the middle of the FUSE loop: it must never await
and never raise (ctypes would print the exception and answer 0). It returns
a result or -errno. Every errno answered here is one the kernel passes to
the caller, except ENOSYS, which would turn the op off for the whole mount:
an ENOSYS from below is answered as EOPNOTSUPP.

What each op does:

- **lseek** (SEEK_DATA / SEEK_HOLE only; the kernel does SEEK_SET/CUR/END
  itself) asks the layer file that shows the node, lower or upper, without
  copying up. A file still in a remote tree has no holes we know of: all
  of it is data, as the kernel's generic lseek would say.
- **fallocate** is a write: it copies a lower file up first (never writing
  the lower), then runs fallocate(2) with the same mode on the upper file,
  so a mode works exactly where the upper filesystem supports it. The
  kernel's FUSE client only forwards KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE;
  it answers EOPNOTSUPP for COLLAPSE_RANGE and INSERT_RANGE itself.
- **copy_file_range** copies up the destination, then runs
  copy_file_range(2) between the layer files, at most `COPY_CHUNK` bytes per
  request (callers loop on short copies) so that one request never holds
  the FUSE loop for long. A remote file on either side answers EOPNOTSUPP:
  the kernel then copies through read and write itself.

Blocking: the calls are metadata operations or in-kernel copies bounded by
`COPY_CHUNK`; a remote fetch (which could take seconds) is never started
here.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from dataclasses import dataclass

from astrid_fs.fuse.ops import FuseOps
from astrid_fs.fuse.shim import FH_INODE, shim_version
from astrid_fs.overlay.inodes import Node, UnknownInode

log = logging.getLogger("astrid_fs.fuse.extra_ops")

# The shim version that has astrid_fuse_set_extra_ops.
EXTRA_OPS_VERSION = 5
# Bytes one COPY_FILE_RANGE request copies at most: an ext4 in-kernel copy
# of 64 MiB takes tens of milliseconds, the longest we let one request hold
# the FUSE loop (the kernel's own cap is 4 GiB minus a page).
COPY_CHUNK = 64 << 20

LSEEK_CB = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int)
FALLOCATE_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_int, ctypes.c_int64,
                                ctypes.c_int64)
COPY_CB = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, ctypes.c_int64, ctypes.c_uint64,
                           ctypes.c_int64, ctypes.c_uint64, ctypes.c_int)


class _Remote(Exception):
    """The file is in a remote tree: no local fd to ask."""


@dataclass(frozen=True)
class _Target:
    """What a handle names: its node and an fd on the layer file."""

    node: Node
    fd: int


def _neg_errno(e: OSError) -> int:
    code = e.errno or errno.EIO
    # ENOSYS would switch the op off for the rest of the mount.
    return -(errno.EOPNOTSUPP if code == errno.ENOSYS else code)


class ExtraOps:
    """The Python side of the shim's LSEEK, FALLOCATE and COPY_FILE_RANGE."""

    def __init__(self, ops: FuseOps) -> None:
        self.ops = ops

    # ---- handle resolution --------------------------------------------------

    def _target(self, fh: int, *, write: bool) -> _Target:
        """The fd the handle reaches; a write copies the file up first."""
        if fh & FH_INODE:
            node = self.ops.table.get(fh ^ FH_INODE)
            if self.ops.ov.remote_of(node) is not None:
                raise _Remote()
            return _Target(node, self.ops.files.inode_fd(node, write=write))
        if self.ops.files.reader(fh) is not None:
            raise _Remote()
        opened = self.ops.files.handle_node(fh)
        if opened is None:
            # Not a handle we gave out: never touch whatever fd has that number.
            raise OSError(errno.EBADF, "unknown file handle")
        return _Target(opened, fh)

    def _wrote(self, target: _Target) -> None:
        self.ops.cache.wrote(target.node.ino)

    def _count(self, op: str) -> None:
        # The daemon's request counters (control socket `stats`).
        self.ops.requests[op] = self.ops.requests.get(op, 0) + 1

    # ---- the ops (never raise) ----------------------------------------------

    def lseek(self, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA / SEEK_HOLE from `offset`: the new offset or -errno."""
        self._count("lseek")
        try:
            try:
                fd = self._target(fh, write=False).fd
            except _Remote:
                return self._remote_lseek(fh, offset, whence)
            # Moves the inode fd's file offset, which nothing else uses
            # (all data I/O on inode fds is pread / pwrite).
            return os.lseek(fd, offset, whence)
        except OSError as e:
            return _neg_errno(e)
        except UnknownInode:  # an inode the kernel told us to forget
            return -errno.ESTALE
        except Exception:  # a bug here must not take the FUSE loop down
            log.exception("lseek(%#x, %d, %d)", fh, offset, whence)
            return -errno.EIO

    def _remote_lseek(self, fh: int, offset: int, whence: int) -> int:
        node = self.ops.table.get(fh ^ FH_INODE) if fh & FH_INODE else None
        if node is None:
            return -errno.EOPNOTSUPP
        size = self.ops.ov.stat(node).st_size
        if offset < 0:
            return -errno.EINVAL
        if offset >= size:
            return -errno.ENXIO
        return offset if whence == os.SEEK_DATA else size

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> int:
        """fallocate(2) with `mode` on the upper copy: 0 or -errno."""
        self._count("fallocate")
        try:
            target = self._target(fh, write=True)
            _fallocate(target.fd, mode, offset, length)
            self._wrote(target)
            return 0
        except _Remote:
            return -errno.EOPNOTSUPP
        except OSError as e:
            return _neg_errno(e)
        except UnknownInode:
            return -errno.ESTALE
        except Exception:
            log.exception("fallocate(%#x, %#x, %d, %d)", fh, mode, offset, length)
            return -errno.EIO

    def copy_file_range(self, fh_in: int, off_in: int, fh_out: int, off_out: int,
                        length: int, flags: int) -> int:
        """Up to `COPY_CHUNK` bytes copied between layer files, or -errno."""
        self._count("copy_file_range")
        if flags:
            return -errno.EINVAL
        try:
            # Destination first: copying it up may replace the inode fd the
            # source would share when both are the same file.
            dst = self._target(fh_out, write=True)
            src = self._target(fh_in, write=False)
            done = os.copy_file_range(src.fd, dst.fd, min(length, COPY_CHUNK), off_in, off_out)
            self._wrote(dst)
            return done
        except _Remote:
            return -errno.EOPNOTSUPP
        except OSError as e:
            return _neg_errno(e)
        except UnknownInode:
            return -errno.ESTALE
        except Exception:
            log.exception("copy_file_range(%#x, %#x)", fh_in, fh_out)
            return -errno.EIO


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with any mode (os.posix_fallocate has none)."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@dataclass(frozen=True)
class Registration:
    """Keeps the ctypes callbacks alive as long as the mount (the shim holds
    only their addresses)."""

    extra: ExtraOps
    callbacks: tuple[object, ...]


def register(ops: FuseOps) -> Registration | None:
    """Hand the shim our callbacks; None (and the kernel's fallbacks) when
    the shim is absent or older than version 5. Call before pyfuse3.init."""
    if shim_version() < EXTRA_OPS_VERSION:
        return None
    extra = ExtraOps(ops)
    callbacks = (LSEEK_CB(extra.lseek), FALLOCATE_CB(extra.fallocate),
                 COPY_CB(extra.copy_file_range))
    shim = ctypes.CDLL(None)
    shim.astrid_fuse_set_extra_ops(*callbacks)
    # O_TMPFILE (shim part 8): only with no_open, where the unnamed file's
    # fd is the inode's own (FuseOps.create) rather than a handle.
    if ops.no_open and hasattr(shim, "astrid_fuse_enable_tmpfile"):
        shim.astrid_fuse_enable_tmpfile()
    return Registration(extra, callbacks)
