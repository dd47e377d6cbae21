"""Copy-up for the overlay core: bringing a lower entry (local, remote, or a
directory shown only above a remote mount point) into the upper layer, its
hard-linked names with it (hardlinks.py), and the unnamed copies of files
that lost their last name while open. The copying itself is `copyup.py`;
this decides what to copy, where, and keeps the inode table right.

Mixed into `OverlayCore` (core.py), as `RemoteFetches` is: needs its layers,
work dir, inode table and link index.
"""

from __future__ import annotations

import errno
import os

from astrid_fs.overlay.copyup import (
    copy_data,
    copy_up,
    copy_up_remote,
    copy_up_synthetic_dir,
)
from astrid_fs.overlay.fetching import RemoteFetches
from astrid_fs.overlay.hardlinks import LinkIndex
from astrid_fs.overlay.inodes import InodeTable, Node
from astrid_fs.overlay.layers import StatLike, SyntheticStat, join, lstat_or_none


def err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class CopyUps(RemoteFetches):
    """Copy-up over `layers` into the upper layer (`tmp`: the work dir)."""

    tmp: bytes
    sync_copy_up: bool
    table: InodeTable
    index: LinkIndex

    def _parent_of(self, node: Node) -> tuple[Node, bytes]:
        for p, n in node.links:
            if p in self.table:
                return self.table.get(p), n
        raise err(errno.ENOENT)

    def copy_up(self, node: Node, *, with_data: bool = True) -> bytes:
        """Make sure `node` exists in the upper layer; return its upper path."""
        return self._copy_up(node, with_data, None)

    def copy_up_open(self, node: Node) -> int:
        """`copy_up`, then a read-write fd on the upper file: the copy's own
        where this copied a regular file (no second path walk and open), else
        opened by path."""
        held: list[int] = []
        try:
            upath = self._copy_up(node, True, held)
            if held:
                return held.pop()
        finally:
            for fd in held:
                os.close(fd)
        return os.open(upath, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)

    def _copy_up(self, node: Node, with_data: bool, held: list[int] | None) -> bytes:
        if node.in_upper:
            return self.layers.upper_path(self.table.path_of(node))
        parent, _ = self._parent_of(node)
        parent_upper = self.copy_up(parent)
        # A copy-up is not a change to the directory: keep its times (as
        # kernel overlayfs does), or the parent's mtime would jump to "now".
        pst = os.lstat(parent_upper)
        rel = self.table.path_of(node)
        upath = self.layers.upper_path(rel)
        assert node.lower is not None
        remote = self.remote_of(node)
        lst: StatLike | None = self.layers.lower_stat(node.lower) if self.layers.remotes \
            else None
        if remote is not None:
            # (always fsync'd: the crash check has no lower to compare with,
            # overlay/unsynced.py)
            copy_up_remote(remote[0], remote[1], node.lower, upath, self.tmp, self.layers.names,
                           with_data=with_data, sync=True)
        elif isinstance(lst, SyntheticStat):
            # A directory that exists only above a remote mount point (`mnt`
            # for /mnt/s3): nothing to copy, just make it, keeping its inode.
            copy_up_synthetic_dir(lst, node.lower, upath, self.tmp, self.layers.names)
        else:
            lst = self._copy_up_local(node.lower, upath, with_data, held)
        os.utime(parent_upper, ns=(pst.st_atime_ns, pst.st_mtime_ns), follow_symlinks=False)
        node.in_upper = True
        if not node.is_dir:
            node.lower = None
        self.table.state_changed(node)
        if remote is None and lst is not None and LinkIndex.applies(lst) and len(node.links) > 1:
            self._link_up_known_names(node, rel, lst)
        return upath

    def _link_up_known_names(self, node: Node, done: bytes, lst: StatLike) -> None:
        """A hard-linked file was copied up under one of its names: give
        every other name the kernel knows its upper link too, so that any
        name of the node reaches the upper copy (hardlinks.py)."""
        index = self.index.live(lst.st_dev, lst.st_ino)
        if index is None:
            return
        for parent_ino, name in list(node.links):
            if parent_ino not in self.table:
                continue
            parent = self.table.get(parent_ino)
            rel = join(self.table.path_of(parent), name)
            if rel == done or lstat_or_none(self.layers.upper_path(rel)) is not None:
                continue
            self._link_up(parent, name, index)

    def lower_alias_removed(self, node: Node) -> None:
        """`node` is about to lose a name that only the lower layer shows:
        keep a hard-linked file's link count right (hardlinks.py)."""
        if node.in_upper or node.is_dir or node.lower is None \
                or self.remote_of_lower(node.lower) is not None:
            return
        lower_path = self.layers.lower_path(node.lower)
        lst = lstat_or_none(lower_path)
        if lst is None or not LinkIndex.applies(lst):
            return
        rel = node.lower
        self.index.alias_removed(
            lst.st_dev, lst.st_ino, lst.st_nlink,
            lambda path: copy_up(lower_path, path, self.tmp, self.layers.names, rel,
                                 sync=self.sync_copy_up))

    def _copy_up_local(self, lower_rel: bytes, upath: bytes, with_data: bool,
                       held: list[int] | None = None) -> os.stat_result:
        """Copy up a local lower entry; returns the lower entry's stat.
        `held`: copyup.copy_up's (a hard-linked file's copy is not held)."""
        lower_path = self.layers.lower_path(lower_rel)
        lst = os.lstat(lower_path)
        if not LinkIndex.applies(lst):
            copy_up(lower_path, upath, self.tmp, self.layers.names, lower_rel,
                    with_data=with_data, sync=self.sync_copy_up, st=lst, held=held)
            return lst
        # A hard-linked lower file: one copy for all its names (hardlinks.py).
        index = self.index.live(lst.st_dev, lst.st_ino)
        if index is not None:
            self.index.link_up(index, upath)
            return lst
        copy_up(lower_path, upath, self.tmp, self.layers.names, lower_rel,
                with_data=with_data, sync=self.sync_copy_up, st=lst)
        self.index.add(upath, lst.st_dev, lst.st_ino, lst.st_nlink)
        return lst

    def anonymous_copy(self, node: Node, source_fd: int | None) -> int:
        """An unnamed read-write copy (O_TMPFILE in the work dir) of a file
        that lost its last name while open, made from `source_fd` or the
        lower file: where writes to it go, as on a plain filesystem."""
        fd = os.open(self.tmp, os.O_TMPFILE | os.O_RDWR, 0o600)
        try:
            remote = self.remote_of(node)
            if source_fd is not None:
                copy_data(source_fd, fd, os.fstat(source_fd).st_size)
            elif remote is not None:
                remote[0].fetch_to(remote[1], fd)
            else:
                if node.lower is None:
                    raise err(errno.ENOENT)
                src = os.open(self.layers.lower_path(node.lower), os.O_RDONLY)
                try:
                    copy_data(src, fd, os.fstat(src).st_size)
                finally:
                    os.close(src)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _link_up(self, parent: Node, name: bytes, index: bytes) -> None:
        parent_upper = self.copy_up(parent)
        pst = os.lstat(parent_upper)
        self.index.link_up(index, parent_upper + b"/" + name)
        os.utime(parent_upper, ns=(pst.st_atime_ns, pst.st_mtime_ns), follow_symlinks=False)
