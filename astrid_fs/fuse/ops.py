"""pyfuse3 Operations for the overlay: a protocol adapter only.

Semantics live in `astrid_fs.overlay` (`Overlay` for the namespace,
`OpenFiles` for every fd); cache choices in `fuse.cache`. This module
decodes handles, runs remote fetches in worker threads, and turns
`OSError`s into `FUSEError(errno)` at this one boundary (`@fuse_errors`).
The directory requests are in dir_ops.py (`DirectoryOps`), the file
requests in file_ops.py (`FileOps`), both mixed in.

Handles (see fuse/native/fuse_shim.c): with the shim's no_open and
no_opendir modes, OPEN and OPENDIR answer ENOSYS and I/O arrives with
`FH_INODE | ino`; CREATE then hands out no handle either (fh 0, which the
shim turns into `FH_INODE | ino`), because the kernel sends no RELEASE in
no_open mode and a handle would leak its fd.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import pyfuse3
import trio

from astrid_fs.fuse.cache import KernelCache
from astrid_fs.fuse.dir_ops import DirectoryOps
from astrid_fs.fuse.file_ops import FileOps
from astrid_fs.fuse.killpriv import Caller, ShimKills
from astrid_fs.fuse.killpriv import drop as drop_privileges
from astrid_fs.fuse.lookup_table import ShimLookups
from astrid_fs.fuse.name_only import NameOnlyListings
from astrid_fs.fuse.passthrough import Passthrough
from astrid_fs.fuse.replies import (
    drop_kernel_caches,
    entry_reply,
    fuse_errors,
    invalidate_later,
    negative_entry,
    owner,
    statvfs_reply,
)
from astrid_fs.fuse.shim import (
    name_only_dirents,
    shim_version,
)
from astrid_fs.fuse.write_table import ShimWriteTable
from astrid_fs.overlay.files import OpenFiles
from astrid_fs.overlay.inodes import Node
from astrid_fs.overlay.layers import StatLike
from astrid_fs.overlay.overlay import Overlay, SetAttr
from astrid_fs.overlay.syscalls import RENAME_EXCHANGE


# (FileOps.read may return a memoryview, which pyfuse3 takes: its stub says bytes.)
class FuseOps(DirectoryOps, FileOps, pyfuse3.Operations):  # type: ignore[misc]
    """Adapter from pyfuse3 requests to `Overlay` and `OpenFiles` calls."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, overlay: Overlay, *, lower_ttl: float) -> None:
        super().__init__()
        version = shim_version()
        self.cache_dirs = version >= 1
        # Shim version 2: OPEN answers ENOSYS; the kernel then keeps file
        # pages across opens and sends I/O by inode (FH_INODE).
        self.no_open = version >= 2
        # Version 3: OPENDIR answers ENOSYS too; listings come by inode.
        self.no_opendir = version >= 3
        # Shim part 11: READDIRPLUS entries without attributes (name_only.py).
        self.name_only = self.no_opendir and name_only_dirents()
        self.name_only_policy = NameOnlyListings()
        self.ov = overlay
        self.table = overlay.table
        # Shim version 7: WRITEs of upper files answered in C (write_table.py).
        self.write_table = ShimWriteTable.load() if self.no_open else None
        self.files = OpenFiles(overlay, write_table=self.write_table)
        self.cache = KernelCache(lower_ttl)
        self.requests: dict[str, int] = {}
        self._dirs: dict[int, tuple[Node, list[bytes] | None]] = {}
        self._next_dir_fh = 1
        # Set by the daemon when the mount asked for passthrough
        # (passthrough.py); None: the daemon path only.
        self.passthrough: Passthrough | None = None
        # Set by the daemon: LOOKUPs of lower-only directories answered in C
        # (lookup_table.py); None: all in Python.
        self.lookups: ShimLookups | None = None
        # Set by the daemon: suid/sgid killed here, not by the kernel
        # (killpriv.py); None: the kernel kills (and probes before each write).
        self.kills: ShimKills | None = None

    # ---- replies ----------------------------------------------------------

    def _entry(self, node: Node, st: StatLike) -> pyfuse3.EntryAttributes:
        merged = self.ov.is_merged(node)
        if self.passthrough is not None and not node.in_upper:
            self.passthrough.prime(node, st)  # its first OPEN answered in C
        return entry_reply(node.ino, st, ttl=self.cache.ttl(node, merged),
                           nlink=self.cache.nlink(node, st, merged), generation=node.generation)

    def _negative(self) -> pyfuse3.EntryAttributes:
        return negative_entry(self.cache.lower_ttl)

    def _count(self, op: str) -> None:
        self.requests[op] = self.requests.get(op, 0) + 1

    # ---- remote trees: fetch in a worker thread, then serve from cache ----

    async def _fetch(self, job: Callable[[], None] | None) -> None:
        """Run a remote fetch the overlay asked for, off the FUSE loop."""
        if job is not None:
            await trio.to_thread.run_sync(job)

    # ---- lookups and attributes -------------------------------------------

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> Any:
        self._count("lookup")
        self.name_only_policy.looked_up(parent_inode, name)
        job = self.ov.fetch_for_lookup(self.table.get(parent_inode), name)
        if job is not None:  # (no await at all for a local lower: per-request cost)
            await self._fetch(job)
        try:
            node, st = self.ov.lookup(parent_inode, name)
        except FileNotFoundError:
            return self._negative()
        if node.is_dir and node.in_upper and self.lookups is not None \
                and not self.ov.is_merged(node):
            # (a directory made in the session, looked up again: after a chmod
            # of it the kernel does) its GETATTRs, misses and CREATEs in C again
            self.lookups.upper_dir_answered(node, st, 0)
        return self._entry(node, st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.table.forget(ino, count)
            if ino not in self.table:
                self.cache.forget(ino)
                self.name_only_policy.forget(ino)
                if self.passthrough is not None:
                    self.passthrough.forget(ino)
                reader = self.files.forget(ino)
                if reader is not None:
                    await trio.to_thread.run_sync(reader.close)

    @fuse_errors
    async def getattr(self, inode: int, ctx: Any) -> Any:
        self._count("getattr")
        node = self.table.get(inode)
        lower_mtime = 0
        if self.ov.is_merged(node):
            lower_mtime = self.ov.lower_mtime_ns(node)
            if self.cache.lower_dir_moved(inode, lower_mtime):
                trio.lowlevel.spawn_system_task(invalidate_later, inode)
        st = self.ov.stat_open(node, self.files.fstat(inode))
        if node.is_dir and node.in_upper and self.lookups is not None:
            self.lookups.upper_dir_answered(node, st, lower_mtime)
        return self._entry(node, st)

    @fuse_errors
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None,
                      ctx: Any) -> Any:
        self._count("setattr")
        change = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        flagged = self.kills is not None and self.kills.take(inode) is not None
        node = self.table.get(inode)
        await self._fetch(self.ov.fetch_for(node, data=True))
        fd = fh if fh is not None and self.files.handle_node(fh) is not None else None
        if fd is None and not self.ov.has_name(node):
            fd = self.files.inode_fd(node, write=True)  # removed, still open
        gid = self.ov.stat_open(node, self.files.fstat(inode)).st_gid if flagged else 0
        st = self.ov.setattr(inode, change, fd)
        if flagged:  # a truncate or chown whose caller may not keep suid/sgid
            # (a chown is flagged whoever asks: root's keeps what root may)
            chown = change.uid is not None or change.gid is not None
            st = drop_privileges(self.ov, node, st, gid,
                                 Caller(ctx.uid if chown else None, ctx.gid, ctx.pid), fd)
        if self.passthrough is not None and (change.mode is not None or flagged):
            self.passthrough.reconsider(inode)  # suid/sgid came or went
        self.cache.wrote(inode)
        return self._entry(node, st)

    @fuse_errors
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return self.ov.readlink(inode)

    # ---- namespace --------------------------------------------------------

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: Any) -> Any:
        self._count("mknod")
        made = self.ov.mknod(parent_inode, name, mode, rdev, owner(ctx))
        await self._entries_changed((parent_inode, name, None))
        return self._entry(*made)

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        self._count("mkdir")
        made = self.ov.mkdir(parent_inode, name, mode, owner(ctx))
        self.cache.unlisted(made[0].ino)
        if self.lookups is not None:  # its GETATTRs, misses and CREATEs in C at once
            self.lookups.upper_dir_answered(*made, 0)
        await self._entries_changed((parent_inode, name, None))
        return self._entry(*made)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        self._count("symlink")
        made = self.ov.symlink(parent_inode, name, target, owner(ctx))
        await self._entries_changed((parent_inode, name, None))
        return self._entry(*made)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        self._count("link")
        node = self.table.get(inode)
        await self._fetch(self.ov.fetch_for(node, data=True))
        nameless = None if self.ov.has_name(node) else self.files.peek(inode)  # O_TMPFILE
        source = nameless.fd if nameless is not None and nameless.in_upper else None
        made = self.ov.link(inode, new_parent_inode, new_name, source)
        await self._entries_changed((new_parent_inode, new_name, None))
        return self._entry(*made)

    def _keep_reachable(self, parent_inode: int, name: bytes) -> None:
        """Before an entry loses a name: if the kernel may hold the file
        open, keep an fd so its data stays reachable after the last name.
        Not while another name of it is known: that name reaches it (and the
        kernel, which holds it under that name too, may not forget it for
        long: `cp -al tree copy && rm -rf copy` pinned an fd per file)."""
        if not self.no_open:
            return
        try:
            node, st = self.ov.peek(parent_inode, name)
        except OSError:
            return
        self._keep_node_reachable(node, st, (parent_inode, name))

    def _keep_node_reachable(self, node: Node, st: StatLike, going: tuple[int, bytes]) -> None:
        """`_keep_reachable` of `node` (whose stat is `st`) losing name `going`."""
        if any(link != going for link in node.links):
            return
        self.files.keep_reachable(node, st)

    async def _entries_changed(self, *changes: tuple[int, bytes | None, bytes | None]) -> None:
        """Each (directory, name added, name removed) of a change: the kept
        listing follows, and the kernel's cached listings of those
        directories are dropped before the change is answered (cache.py,
        `entries_changed`). From a worker thread, as every invalidation here:
        the kernel may wait on a listing page a reader holds while that
        reader waits on this daemon."""
        stale = [ino for ino, added, removed in changes
                 if self.cache.entries_changed(ino, added, removed)]
        if stale:
            await trio.to_thread.run_sync(drop_kernel_caches, stale)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._count("unlink")
        # (the overlay's own resolution of the name, not a second one here)
        keep = None if not self.no_open else \
            lambda node, st: self._keep_node_reachable(node, st, (parent_inode, name))
        self.ov.unlink(parent_inode, name, keep)
        await self._entries_changed((parent_inode, None, name))

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._count("rmdir")
        # A remote directory's listing (is it empty?), which its lookup did not fetch.
        await self._fetch(self.ov.fetch_for_child(self.table.get(parent_inode), name))
        self.ov.rmdir(parent_inode, name)
        await self._entries_changed((parent_inode, None, name))

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        self._count("rename")
        self._keep_reachable(parent_inode_new, name_new)
        # Both ends' data: the source moves, the destination's content is
        # kept as the base of a later merge (overlay/basecontent.py).
        for parent, name in ((parent_inode_old, name_old), (parent_inode_new, name_new)):
            await self._fetch(self.ov.fetch_for_child(self.table.get(parent), name, data=True))
        self.ov.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        if flags & RENAME_EXCHANGE:  # (both names stay, each now another entry)
            await self._entries_changed((parent_inode_old, None, None),
                                        (parent_inode_new, None, None))
        else:
            await self._entries_changed((parent_inode_old, None, name_old),
                                        (parent_inode_new, name_new, None))

    # ---- xattrs and statfs ------------------------------------------------

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        self._count("getxattr")
        return self.ov.getxattr(inode, os.fsdecode(name))

    @fuse_errors
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        self._count("listxattr")
        return [os.fsencode(n) for n in self.ov.listxattr(inode)]

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        self._count("setxattr")
        await self._fetch(self.ov.fetch_for(self.table.get(inode), data=True))
        self.ov.setxattr(inode, os.fsdecode(name), value)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self._count("removexattr")
        await self._fetch(self.ov.fetch_for(self.table.get(inode), data=True))
        self.ov.removexattr(inode, os.fsdecode(name))

    @fuse_errors
    async def statfs(self, ctx: Any) -> Any:
        return statvfs_reply(self.ov.statfs())

    # ---- cache control (called by the daemon's control socket) -------------

    def invalidate_all(self) -> tuple[list[int], list[tuple[int, bytes]]]:
        """Re-read the layers after they changed behind the mount (commit,
        discard, rollback) and list what the kernel must forget. Open files
        keep working: their nodes are re-pointed, not dropped."""
        self.cache.clear()
        self.files.layers_changed()
        if self.passthrough is not None:
            self.passthrough.layers_changed()
        return self.ov.layers_changed()
