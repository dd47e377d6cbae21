"""pyfuse3 Operations for the overlay: a protocol adapter only.

Semantics live in `overlay.py`. This module turns FUSE requests into overlay
calls, `OSError`s into `FUSEError(errno)` at this one boundary, and decides
what the kernel may cache:
- entries and attributes backed by the upper layer: UPPER_TTL (only the
  kernel's own requests change them while mounted; commit, discard and
  rollback invalidate explicitly through the control socket);
- entries backed by the lower layer, and negative lookups: `lower_ttl`
  (the user may edit the project under a running session);
- page cache: kept across opens (`keep_cache`) while the file's mtime and
  size are what they were at the last open, or changed only through us.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import pyfuse3
import trio

from astrid_fs.fuse.shim import FH_CACHE_DIR, FH_FLAG_MASK, FH_INODE, FH_KEEP_CACHE, shim_version
from astrid_fs.overlay.fds import InodeFd, InodeFds
from astrid_fs.overlay.inodes import Node
from astrid_fs.overlay.layers import Reader, StatLike
from astrid_fs.overlay.overlay import Overlay, Owner, SetAttr

log = logging.getLogger("astrid_fs.fuse")

UPPER_TTL = 3600.0
NAME_MAX = 255


class FuseOps(pyfuse3.Operations):
    """Adapter from pyfuse3 requests to `Overlay` operations."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, overlay: Overlay, *, lower_ttl: float) -> None:
        super().__init__()
        version = shim_version()
        self.cache_dirs = version >= 1
        # With shim version 2, OPEN answers ENOSYS: the kernel then keeps
        # file pages cached across opens and sends I/O by inode (FH_INODE).
        self.no_open = version >= 2
        # Version 3: OPENDIR answers ENOSYS too; listings come by inode.
        self.no_opendir = version >= 3
        self._listings: OrderedDict[int, list[bytes]] = OrderedDict()
        self._merged_lower_mtime: dict[int, int] = {}
        self.ino_fds = InodeFds()
        self._ino_readers: dict[int, Reader] = {}
        self.requests: dict[str, int] = {}
        self._dir_sig: dict[int, tuple[int, int]] = {}
        self.ov = overlay
        self.table = overlay.table
        self.lower_ttl = lower_ttl
        self._fh_nodes: dict[int, Node] = {}
        self._dirs: dict[int, tuple[Node, list[bytes] | None]] = {}
        self._next_dir_fh = 1
        self._kernel_wrote: set[int] = set()
        # Remote readers get handle numbers above any fd (fds are < 2**31).
        self._readers: dict[int, tuple[Node, Reader]] = {}
        self._next_reader_fh = 1 << 40
        self._last_sig: dict[int, tuple[int, int]] = {}

    # ---- helpers ----------------------------------------------------------

    def _entry(self, node: Node, st: StatLike) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        # A merged directory also shows the lower layer: it gets the lower TTL,
        # so that project edits there are noticed (see _watch_merged).
        merged = node.is_dir and node.in_upper and node.lower is not None
        ttl = UPPER_TTL if node.in_upper and not merged else self.lower_ttl
        e.entry_timeout = ttl
        e.attr_timeout = ttl
        e.st_mode = st.st_mode
        e.st_nlink = 0 if not node.links and node.ino != 1 else (
            1 if self.ov.is_merged(node) else st.st_nlink)
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def _negative(self) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.lower_ttl
        return e

    @staticmethod
    def _fail(e: OSError) -> pyfuse3.FUSEError:
        return pyfuse3.FUSEError(e.errno or errno.EIO)

    def _node(self, ino: int) -> Node:
        try:
            return self.table.get(ino)
        except KeyError:
            # The kernel asked about an inode it told us to forget: stale.
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    # ---- lookups and attributes -------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> Any:
        self._count("lookup")
        parent = self._node(parent_inode)
        await self._warm_child(parent, name)
        try:
            node, st = self.ov.lookup(parent_inode, name)
        except FileNotFoundError:
            return self._negative()
        except OSError as e:
            raise self._fail(e) from None
        return self._entry(node, st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.table.forget(ino, count)
            if ino not in self.table:
                self.ino_fds.close(ino)
                self._listings.pop(ino, None)
                self._merged_lower_mtime.pop(ino, None)
                reader = self._ino_readers.pop(ino, None)
                if reader is not None:
                    await trio.to_thread.run_sync(reader.close)

    async def getattr(self, inode: int, ctx: Any) -> Any:
        self._count("getattr")
        node = self._node(inode)
        if not node.links and inode != 1:
            entry = self.ino_fds.get(inode)
            if entry is not None:  # unlinked but open: the fd is the file
                return self._entry(node, os.fstat(entry.fd))
        try:
            if node.is_dir and node.in_upper and node.lower is not None:
                self._watch_merged(node)
            return self._entry(node, self.ov.stat(node))
        except FileNotFoundError:
            entry = self.ino_fds.get(inode)
            if entry is None:
                raise pyfuse3.FUSEError(errno.ENOENT) from None
            return self._entry(node, os.fstat(entry.fd))
        except OSError as e:
            raise self._fail(e) from None

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None,
                      ctx: Any) -> Any:
        change = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        node = self._node(inode)
        await self._warm_node(node, data=True)
        fd = fh if fh is not None and fh in self._fh_nodes else None
        try:
            try:
                st = self.ov.setattr(inode, change, fd)
            except FileNotFoundError:
                if fd is not None or (self.ino_fds.get(inode) is None and node.in_upper):
                    raise
                fd = self._inode_fd(node, write=True)  # unlinked, still open
                st = self.ov.setattr(inode, change, fd)
        except OSError as e:
            raise self._fail(e) from None
        self._kernel_wrote.add(inode)
        return self._entry(node, st)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        try:
            return self.ov.readlink(inode)
        except OSError as e:
            raise self._fail(e) from None

    # ---- namespace --------------------------------------------------------

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: Any) -> Any:
        return self._made(lambda o: self.ov.mknod(parent_inode, name, mode, rdev, o), ctx)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        return self._made(lambda o: self.ov.mkdir(parent_inode, name, mode, o), ctx)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        return self._made(lambda o: self.ov.symlink(parent_inode, name, target, o), ctx)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        await self._warm_node(self._node(inode), data=True)
        return self._made(lambda o: self.ov.link(inode, new_parent_inode, new_name), ctx)

    def _made(self, make: Any, ctx: Any) -> Any:
        try:
            node, st = make(Owner(ctx.uid, ctx.gid))
        except OSError as e:
            raise self._fail(e) from None
        return self._entry(node, st)

    def _keep_reachable(self, parent_inode: int, name: bytes) -> None:
        """Before an entry loses a name: if the kernel may hold the file open,
        keep an fd so its data stays readable after the last name is gone."""
        if not self.no_open:
            return
        try:
            node, st = self.ov.peek(parent_inode, name)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode) or node.lookups == 0 or not node.in_upper:
            return
        entry = self.ino_fds.get(node.ino)
        if entry is None or not entry.in_upper:
            # Pin an fd on the upper file itself, never a stale lower one.
            self.ino_fds.close(node.ino)
            self._inode_fd(node, write=False)
        self.ino_fds.pin(node.ino)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        try:
            self._keep_reachable(parent_inode, name)
            self.ov.unlink(parent_inode, name)
        except OSError as e:
            raise self._fail(e) from None

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        try:
            self.ov.rmdir(parent_inode, name)
        except OSError as e:
            raise self._fail(e) from None

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        self._keep_reachable(parent_inode_new, name_new)
        old_parent = self._node(parent_inode_old)
        if old_parent.lower is not None and self.ov.layers.remotes:
            await self._warm(old_parent.lower + b"/" + name_old if old_parent.lower else name_old,
                             data=True)
        try:
            self.ov.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        except OSError as e:
            raise self._fail(e) from None

    # ---- merged directories: the kernel's listing cache follows the lower --

    def _watch_merged(self, node: Node) -> None:
        """The kernel validates a cached listing against the directory's
        mtime, which for a merged directory is the upper one's; when the
        lower directory's mtime moves (the project was edited), drop the
        kernel's caches of this directory after this reply."""
        lower = self.ov.lower_mtime_ns(node)
        seen = self._merged_lower_mtime.get(node.ino)
        self._merged_lower_mtime[node.ino] = lower
        if seen is not None and seen != lower:
            self._listings.pop(node.ino, None)
            trio.lowlevel.spawn_system_task(self._invalidate_later, node.ino)

    @staticmethod
    async def _invalidate_later(ino: int) -> None:
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino)
        except Exception as e:  # a system task must never raise
            log.warning("invalidate_inode(%d) failed: %s", ino, e)

    # ---- remote trees: fetch in a worker thread, then serve from cache ----

    async def _warm(self, lower_rel: bytes | None, data: bool = False) -> None:
        """Make sure the remote metadata (or content) for a lower path is
        cached, fetching in a worker thread so the FUSE loop never blocks on
        the network. A no-op for local lower paths."""
        if lower_rel is None or not self.ov.layers.remotes:
            return
        hit = self.ov.layers.remote_for(lower_rel)
        if hit is None or hit[0].is_warm(hit[1], data):
            return
        try:
            await trio.to_thread.run_sync(hit[0].warm, hit[1], data)
        except OSError as e:
            raise self._fail(e) from None

    async def _warm_node(self, node: Node, data: bool = False) -> None:
        if not node.in_upper or node.is_dir:
            await self._warm(node.lower, data and not node.in_upper)

    async def _warm_child(self, parent: Node, name: bytes) -> None:
        if parent.lower is not None and self.ov.layers.remotes:
            await self._warm(parent.lower)
            await self._warm(parent.lower + b"/" + name if parent.lower else name)

    # ---- files ------------------------------------------------------------

    def _file_info(self, node: Node, fd: int, st: StatLike) -> Any:
        sig = (st.st_mtime_ns, st.st_size)
        keep = self._last_sig.get(node.ino) == sig or node.ino in self._kernel_wrote
        self._last_sig[node.ino] = sig
        self._kernel_wrote.discard(node.ino)
        self._fh_nodes[fd] = node
        self.table.add_handle(node, fd)
        return pyfuse3.FileInfo(fh=fd, keep_cache=keep)

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        self._count("open")
        node = self._node(inode)
        if self.no_open:
            # ENOSYS turns on the kernel's no_open mode (this open succeeds).
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if self.ov.layers.remotes:
            await self._warm_node(node, data=bool(flags & (os.O_WRONLY | os.O_RDWR
                                                           | os.O_APPEND)))
            try:
                opened = self.ov.open_remote(inode, flags)
            except OSError as e:
                raise self._fail(e) from None
            if opened is not None:
                fh = self._next_reader_fh
                self._next_reader_fh += 1
                self._readers[fh] = opened
                return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        try:
            node, fd = self.ov.open(inode, flags)
            st = os.fstat(fd)
        except OSError as e:
            raise self._fail(e) from None
        if flags & os.O_TRUNC:
            self._kernel_wrote.add(inode)
        return self._file_info(node, fd, st)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> Any:
        try:
            node, st, fd = self.ov.create(parent_inode, name, mode, flags,
                                          Owner(ctx.uid, ctx.gid))
        except OSError as e:
            raise self._fail(e) from None
        return self._file_info(node, fd, st), self._entry(node, st)

    def _inode_fd(self, node: Node, write: bool) -> int:
        """The fd for no-open I/O on `node`, (re)opened as the layers require.

        Never opens a lower file for writing: a write to a file still in the
        lower layer copies it up first, or, if it has no name left (unlinked
        while open), goes to an unnamed copy."""
        entry = self.ino_fds.get(node.ino)
        if entry is not None and entry.in_upper == node.in_upper and (entry.writable or not write):
            return entry.fd
        if entry is not None and entry.pinned and entry.in_upper:
            # An upper file unlinked while open: only the fd reaches it.
            fd = os.open(f"/proc/self/fd/{entry.fd}", os.O_RDWR if write else os.O_RDONLY)
            self.ino_fds.put(node.ino, InodeFd(fd, write, True, pinned=True))
            return fd
        if not node.links and node.ino != 1:
            if not write and entry is not None:
                return entry.fd
            if write:
                fd = self.ov.anonymous_copy(node, None if entry is None else entry.fd)
                self.ino_fds.put(node.ino, InodeFd(fd, True, True, pinned=True))
                return fd
        if write:
            fd = os.open(self.ov.copy_up(node), os.O_RDWR | os.O_NOFOLLOW)
        else:
            fd = os.open(self.ov.real_path(node), os.O_RDONLY | os.O_NOFOLLOW)
        self.ino_fds.put(node.ino, InodeFd(fd, write, node.in_upper))
        return fd

    async def _read_inode(self, ino: int, off: int, size: int) -> bytes:
        node = self._node(ino)
        if self.ov.remote_of(node) is not None:
            reader = self._ino_readers.get(ino)
            if reader is None:
                await self._warm_node(node)
                opened = self.ov.open_remote(ino, os.O_RDONLY)
                assert opened is not None
                reader = self._ino_readers[ino] = opened[1]
            return await trio.to_thread.run_sync(reader.pread, size, off)
        return os.pread(self._inode_fd(node, write=False), size, off)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if fh == 0:
            log.error("read with file handle 0: FUSE shim mismatch")
            raise pyfuse3.FUSEError(errno.EIO)
        if fh & FH_INODE:
            try:
                return await self._read_inode(fh ^ FH_INODE, off, size)
            except OSError as e:
                raise self._fail(e) from None
        remote = self._readers.get(fh)
        if remote is not None:
            try:
                return await trio.to_thread.run_sync(remote[1].pread, size, off)
            except OSError as e:
                raise self._fail(e) from None
        try:
            return os.pread(fh, size, off)
        except OSError as e:
            raise self._fail(e) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if fh == 0:
            # No-open I/O whose inode the shim did not fill in: never let a
            # write land on fd 0. (Cannot happen with a matching shim.)
            log.error("write with file handle 0: FUSE shim mismatch")
            raise pyfuse3.FUSEError(errno.EIO)
        if fh & FH_INODE:
            target = self._node(fh ^ FH_INODE)
            await self._warm_node(target, data=True)
            try:
                return os.pwrite(self._inode_fd(target, write=True), buf, off)
            except OSError as e:
                raise self._fail(e) from None
        try:
            n = os.pwrite(fh, buf, off)
        except OSError as e:
            raise self._fail(e) from None
        node = self._fh_nodes.get(fh)
        if node is not None:
            self._kernel_wrote.add(node.ino)
        return n

    async def flush(self, fh: int) -> None:
        # Nothing is buffered here: ENOSYS tells the kernel to stop sending
        # FLUSH on every close (one round trip saved per close).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        remote = self._readers.pop(fh, None)
        if remote is not None:
            await trio.to_thread.run_sync(remote[1].close)
            return
        node = self._fh_nodes.pop(fh, None)
        os.close(fh)
        if node is not None:
            self.table.release_handle(node, fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        if fh & FH_INODE:
            entry = self.ino_fds.get(fh ^ FH_INODE)
            if entry is None or not entry.writable:
                return  # nothing written through us since it was opened
            fh = entry.fd
        try:
            (os.fdatasync if datasync else os.fsync)(fh)
        except OSError as e:
            raise self._fail(e) from None

    # ---- directories ------------------------------------------------------

    def _count(self, op: str) -> None:
        self.requests[op] = self.requests.get(op, 0) + 1

    async def opendir(self, inode: int, ctx: Any) -> int:
        self._count("opendir")
        node = self._node(inode)
        if self.no_opendir:
            # ENOSYS turns on the kernel's no_opendir mode (this one succeeds).
            raise pyfuse3.FUSEError(errno.ENOSYS)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self._dirs[fh] = (node, None)
        if not self.cache_dirs:
            return fh
        # With the shim, the kernel caches this listing (FOPEN_CACHE_DIR) and
        # keeps it across opens while neither layer's directory changed.
        try:
            sig = self.ov.dir_signature(node)
        except OSError as e:
            raise self._fail(e) from None
        keep = self._dir_sig.get(inode) == sig
        self._dir_sig[inode] = sig
        return fh | FH_CACHE_DIR | (FH_KEEP_CACHE if keep else 0)

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        self._count("readdir")
        if fh & FH_INODE:
            node = self._node(fh ^ FH_INODE)
            names = self._listings.get(node.ino) if start_id else None
        else:
            fh &= ~FH_FLAG_MASK
            node, names = self._dirs[fh]
        if names is None or start_id == 0:
            await self._warm_node(node)
            try:
                names = [b".", b"..", *self.ov.list_dir(node)]
            except OSError as e:
                raise self._fail(e) from None
            if fh & FH_INODE:
                self._keep_listing(node.ino, names)
            else:
                self._dirs[fh] = (node, names)
        try:
            # Lazily: resolve only what fits in the kernel's buffer.
            for index, name, child, st in self.ov.children(node.ino, names, start_id):
                dot = name == b"." or name == b".."
                if not pyfuse3.readdir_reply(token, name, self._entry(child, st), index + 1):
                    if not dot:
                        self.table.forget(child.ino, 0)
                    break
                if not dot:
                    self.table.add_lookup(child)
        except OSError as e:
            raise self._fail(e) from None

    def _keep_listing(self, ino: int, names: list[bytes]) -> None:
        """Listings taken for no-opendir readdir, until the next rewind
        (bounded: the kernel caches them itself once read through)."""
        self._listings[ino] = names
        self._listings.move_to_end(ino)
        while len(self._listings) > 256:
            self._listings.popitem(last=False)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh & ~FH_FLAG_MASK, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        if fh & FH_INODE:
            node = self._node(fh ^ FH_INODE)
        else:
            node, _ = self._dirs[fh & ~FH_FLAG_MASK]
        if not node.in_upper:
            return
        try:
            dfd = os.open(self.ov.real_path(node), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            raise self._fail(e) from None

    # ---- xattrs and statfs ------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        self._count("getxattr")
        try:
            return self.ov.getxattr(inode, os.fsdecode(name))
        except OSError as e:
            raise self._fail(e) from None

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        try:
            return [os.fsencode(n) for n in self.ov.listxattr(inode)]
        except OSError as e:
            raise self._fail(e) from None

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        await self._warm_node(self._node(inode), data=True)
        try:
            self.ov.setxattr(inode, os.fsdecode(name), value)
        except OSError as e:
            raise self._fail(e) from None

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        await self._warm_node(self._node(inode), data=True)
        try:
            self.ov.removexattr(inode, os.fsdecode(name))
        except OSError as e:
            raise self._fail(e) from None

    async def statfs(self, ctx: Any) -> Any:
        try:
            vfs = self.ov.statfs()
        except OSError as e:
            raise self._fail(e) from None
        out = pyfuse3.StatvfsData()
        out.f_bsize = vfs.f_bsize
        out.f_frsize = vfs.f_frsize
        out.f_blocks = vfs.f_blocks
        out.f_bfree = vfs.f_bfree
        out.f_bavail = vfs.f_bavail
        out.f_files = vfs.f_files
        out.f_ffree = vfs.f_ffree
        out.f_favail = vfs.f_favail
        out.f_namemax = NAME_MAX
        return out

    # ---- cache control (called by the daemon's control socket) -------------

    def invalidate_all(self) -> tuple[list[int], list[tuple[int, bytes]]]:
        """Re-read the layers after they changed behind the mount (commit,
        discard, rollback) and list what the kernel must forget: every known
        inode's attributes and pages, every known name, and every name now in
        a known directory (to drop negative entries)."""
        for _, tree in self.ov.layers.remotes:
            tree.invalidate()
        list(self.ov.refresh())
        self._last_sig.clear()
        self._dir_sig.clear()
        self._listings.clear()
        self.ino_fds.clear()
        inodes: list[int] = []
        entries: set[tuple[int, bytes]] = set()
        for node in self.table.nodes():
            inodes.append(node.ino)
            entries.update(node.links)
            if node.is_dir:
                try:
                    entries.update((node.ino, n) for n in self.ov.list_dir(node))
                except OSError:
                    continue
        return inodes, sorted(entries)
