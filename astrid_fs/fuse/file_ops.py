"""File requests of the FUSE adapter: OPEN, CREATE, READ, WRITE, FLUSH,
RELEASE, FSYNC.

Mixed into `FuseOps` (ops.py), whose state it uses: the overlay, the inode
table, the open files (`OpenFiles`), the kernel-cache policy and, when the
mount has them, passthrough and the daemon's suid/sgid kills. Handles: with
the shim's no_open mode OPEN answers ENOSYS and I/O arrives by inode
(`FH_INODE | ino`); otherwise a handle of `OpenFiles` (a host fd, or a
remote file's reader).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import trio

from astrid_fs.fuse.cache import KernelCache
from astrid_fs.fuse.killpriv import ShimKills
from astrid_fs.fuse.killpriv import drop as drop_privileges
from astrid_fs.fuse.passthrough import Passthrough
from astrid_fs.fuse.replies import fuse_errors, owner
from astrid_fs.fuse.shim import FH_INODE
from astrid_fs.overlay.files import OpenFiles
from astrid_fs.overlay.inodes import InodeTable, Node
from astrid_fs.overlay.layers import Reader, StatLike
from astrid_fs.overlay.overlay import TMPFILE_NAME, Overlay

log = logging.getLogger("astrid_fs.fuse")


class FileOps:
    """The file half of `FuseOps`."""

    ov: Overlay
    table: InodeTable
    files: OpenFiles
    cache: KernelCache
    no_open: bool
    passthrough: Passthrough | None
    kills: ShimKills | None
    _count: Callable[[str], None]
    _entry: Callable[[Node, StatLike], pyfuse3.EntryAttributes]
    _fetch: Callable[[Callable[[], None] | None], Awaitable[None]]
    _entries_changed: Callable[..., Awaitable[None]]

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        self._count("open")
        node = self.table.get(inode)
        if self.no_open and self.passthrough is not None and self.passthrough.usable():
            # Passthrough needs OPEN: the shim answers most of them from
            # its table; these are the ones it could not.
            await self._fetch(self.ov.fetch_for(node, data=self.ov.is_write_open(flags)))
            return self.passthrough.open(node, flags)
        if self.no_open:
            # ENOSYS turns on the kernel's no_open mode (this open succeeds).
            raise pyfuse3.FUSEError(errno.ENOSYS)
        await self._fetch(self.ov.fetch_for(node, data=self.ov.is_write_open(flags)))
        reader = self.ov.open_remote(inode, flags)
        if reader is not None:
            return pyfuse3.FileInfo(fh=self.files.add_reader(node, reader), keep_cache=True)
        node, fd = self.ov.open(inode, flags)
        st = os.fstat(fd)
        if flags & os.O_TRUNC:
            self.cache.wrote(inode)
        keep = self.cache.keep_pages(inode, st)
        return pyfuse3.FileInfo(fh=self.files.add_handle(node, fd), keep_cache=keep)

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> Any:
        self._count("create")
        if name == TMPFILE_NAME:  # open(dir, O_TMPFILE): shim part 8
            node, st, fd = self.ov.tmpfile(parent_inode, mode, owner(ctx))
            self.files.adopt(node, fd)
            self.files.keep_reachable(node, st)  # its only name is this fd
            return pyfuse3.FileInfo(fh=0), self._entry(node, st)
        node, st, fd = self.ov.create(parent_inode, name, mode, flags, owner(ctx))
        await self._entries_changed((parent_inode, name, None))
        keep = self.cache.keep_pages(node.ino, st)
        direct = self.cache.direct_for_create(flags)
        if self.no_open:
            # Keep the fd as the inode's own (bounded, closed at forget) and
            # hand out none: handle 0, whose RELEASE the shim answers (part 22).
            self.files.adopt(node, fd)
            if self.passthrough is not None and self.passthrough.usable():
                return self.passthrough.create(node, st.st_mode), self._entry(node, st)
            return pyfuse3.FileInfo(fh=0, keep_cache=keep, direct_io=direct), \
                self._entry(node, st)
        return (pyfuse3.FileInfo(fh=self.files.add_handle(node, fd), keep_cache=keep,
                                 direct_io=direct),
                self._entry(node, st))

    async def _remote_read(self, reader: Reader, size: int, off: int) -> bytes | memoryview:
        """A READ of a remote file: answered on this (the FUSE) thread when the
        driver already holds the bytes (its block cache or a finished read-ahead
        fetch), else in one worker-thread hop (the read may wait on the network).
        A memoryview goes to pyfuse3 as it is: the reply is written from it."""
        data = reader.try_pread(size, off)
        if data is not None:
            self._count("remote_read_inline")
            return data
        self._count("remote_read_thread")
        return await trio.to_thread.run_sync(reader.pread, size, off)

    async def _read_inode(self, ino: int, off: int, size: int) -> bytes | memoryview:
        node = self.table.get(ino)
        if self.ov.remote_of(node) is not None:
            reader = self.files.inode_reader(node)
            if reader is None:
                await self._fetch(self.ov.fetch_for(node))
                reader = self.ov.open_remote(ino, os.O_RDONLY)
                assert reader is not None
                self.files.set_inode_reader(node, reader)
            return await self._remote_read(reader, size, off)
        return self.files.pread(node, size, off)

    @fuse_errors
    async def read(  # pyfuse3 takes any buffer (PyObject_GetBuffer), not only bytes
            self, fh: int, off: int, size: int) -> bytes | memoryview:
        self._count("read")
        if fh == 0:
            log.error("read with file handle 0: FUSE shim mismatch")
            raise pyfuse3.FUSEError(errno.EIO)
        if fh & FH_INODE:
            return await self._read_inode(fh ^ FH_INODE, off, size)
        reader = self.files.reader(fh)
        if reader is not None:
            return await self._remote_read(reader, size, off)
        return os.pread(fh, size, off)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self._count("write")
        if fh == 0:
            # No-open I/O whose inode the shim did not fill in: never let a
            # write land on fd 0. (Cannot happen with a matching shim.)
            log.error("write with file handle 0: FUSE shim mismatch")
            raise pyfuse3.FUSEError(errno.EIO)
        if fh & FH_INODE:
            node = self.table.get(fh ^ FH_INODE)
            caller = None if self.kills is None else self.kills.take(node.ino)
            await self._fetch(self.ov.fetch_for(node, data=True))
            written = self.files.pwrite(node, buf, off)
            if caller is not None:  # killpriv.py; a WRITE's reply carries no mode
                st = self.ov.stat_open(node, self.files.fstat(node.ino))
                fd = None if self.ov.has_name(node) else self.files.inode_fd(node, write=True)
                if drop_privileges(self.ov, node, st, st.st_gid, caller, fd) is not st:
                    assert self.kills is not None
                    self.kills.invalidate(node.ino)
            return written
        n = os.pwrite(fh, buf, off)
        opened = self.files.handle_node(fh)
        if opened is not None:
            self.cache.wrote(opened.ino)
        return n

    async def flush(self, fh: int) -> None:
        # Nothing is buffered here: ENOSYS tells the kernel to stop sending
        # FLUSH on every close (one round trip saved per close).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @fuse_errors
    async def release(self, fh: int) -> None:
        if fh == 0 or fh & FH_INODE:
            # A no-open CREATE's file: its fd is the inode's (see create).
            return
        reader = self.files.release(fh)
        if reader is not None:
            await trio.to_thread.run_sync(reader.close)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        if fh & FH_INODE:
            ino = fh ^ FH_INODE
            if self.passthrough is not None and self.passthrough.has_backing(ino):
                # The kernel wrote the upper file itself: sync it by any fd.
                fd = self.files.inode_fd(self.table.get(ino), write=False)
                (os.fdatasync if datasync else os.fsync)(fd)
                return
            self.files.fsync_inode(ino, datasync)
        else:
            (os.fdatasync if datasync else os.fsync)(fh)
