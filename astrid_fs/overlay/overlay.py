"""The overlay: FUSE-shaped operations on a lower and an upper layer.

`Overlay` is the whole surface the FUSE adapter uses: resolution and
copy-up (`core.py`, `copying.py`), the namespace (`namespace.py`), and here attributes,
opens, links and xattrs. Nothing here ever writes the lower layer.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from astrid_fs.overlay.copying import err
from astrid_fs.overlay.copyup import temp_name
from astrid_fs.overlay.core import STRIP_FLAGS, WRITE_FLAGS
from astrid_fs.overlay.inodes import Node, upper_only_ino
from astrid_fs.overlay.layers import Reader, StatLike
from astrid_fs.overlay.namespace import Namespace, Owner
from astrid_fs.overlay.syscalls import link_open_file

__all__ = ["TMPFILE_NAME", "Overlay", "Owner", "SetAttr"]

#: The name a FUSE CREATE carries for open(dir, O_TMPFILE) (fuse_shim.c part
#: 8): a tmpfile dentry is called "/", which no directory entry can be.
TMPFILE_NAME = b"/"


@dataclass(frozen=True)
class SetAttr:
    """Which attributes a setattr changes (None: unchanged)."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


class Overlay(Namespace):
    """Copy-on-write operations over `layers`, keyed by overlay inode number."""

    # ---- O_TMPFILE ------------------------------------------------------------

    def tmpfile(self, parent_ino: int, mode: int, owner: Owner) -> tuple[Node, StatLike, int]:
        """open(dir, O_TMPFILE): an unnamed file in the upper copy of the
        directory, returned with its (only) fd. It has no name until a
        `link` from that fd; closed unlinked, it is gone, as on ext4."""
        parent = self.table.get(parent_ino)
        if not parent.is_dir:
            raise err(errno.ENOTDIR)
        pupper = self.copy_up(parent)
        uid, gid, _ = self._owner_of_new(pupper, owner)
        fd = os.open(pupper, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, stat.S_IMODE(mode))
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, stat.S_IMODE(mode))
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        node = self.table.nameless(upper_only_ino(st.st_ino), st)
        return node, st, fd

    def link(self, ino: int, parent_ino: int, name: bytes,
             source_fd: int | None = None) -> tuple[Node, StatLike]:
        """A new name for `ino`; `source_fd` is the open upper file of one
        that has no name yet (O_TMPFILE), linked from its fd."""
        if source_fd is None:
            return super().link(ino, parent_ino, name)
        parent = self.table.get(parent_ino)
        upath, plan = self._new_entry_path(parent, name)
        if plan.over_whiteout:
            tmp = temp_name(self.tmp)
            link_open_file(source_fd, tmp)
            os.rename(tmp, upath)
        else:
            link_open_file(source_fd, upath)
        return self._finish_new(parent_ino, name, made=False)

    # ---- attributes and data ----------------------------------------------

    def setattr(self, ino: int, change: SetAttr, fd: int | None) -> StatLike:
        node = self.table.get(ino)
        truncating_to_zero = change.size == 0
        try:
            upath: bytes | None = self.copy_up(node, with_data=not truncating_to_zero)
        except FileNotFoundError:
            upath = None  # unlinked but open: act on the fd
            if fd is None:
                raise
        if upath is None:
            assert fd is not None
            self._setattr_fd(fd, change)
            return os.fstat(fd)
        if change.uid is not None or change.gid is not None:
            os.lchown(upath, -1 if change.uid is None else change.uid,
                      -1 if change.gid is None else change.gid)
        if change.mode is not None and not stat.S_ISLNK(os.lstat(upath).st_mode):
            os.chmod(upath, stat.S_IMODE(change.mode))
        if change.size is not None:
            os.truncate(upath, change.size)
        if change.atime_ns is not None or change.mtime_ns is not None:
            cur = os.lstat(upath)
            os.utime(upath, ns=(cur.st_atime_ns if change.atime_ns is None else change.atime_ns,
                                cur.st_mtime_ns if change.mtime_ns is None else change.mtime_ns),
                     follow_symlinks=False)
        return self.upper_stat(upath)

    @staticmethod
    def _setattr_fd(fd: int, change: SetAttr) -> None:
        if change.uid is not None or change.gid is not None:
            os.fchown(fd, -1 if change.uid is None else change.uid,
                      -1 if change.gid is None else change.gid)
        if change.mode is not None:
            os.fchmod(fd, stat.S_IMODE(change.mode))
        if change.size is not None:
            os.ftruncate(fd, change.size)
        if change.atime_ns is not None or change.mtime_ns is not None:
            cur = os.fstat(fd)
            os.utime(fd, ns=(cur.st_atime_ns if change.atime_ns is None else change.atime_ns,
                             cur.st_mtime_ns if change.mtime_ns is None else change.mtime_ns))

    def readlink(self, ino: int) -> bytes:
        node = self.table.get(ino)
        remote = self.remote_of(node)
        if remote is not None:
            return remote[0].readlink(remote[1])
        return os.readlink(self.real_path(node))

    @staticmethod
    def is_write_open(flags: int) -> bool:
        return bool(flags & WRITE_FLAGS)

    def open_remote(self, ino: int, flags: int) -> Reader | None:
        """For a read-only open of a file still in a remote tree: a reader.
        None when `open` applies (local, copied up, or a write open)."""
        node = self.table.get(ino)
        remote = self.remote_of(node)
        if remote is None or flags & WRITE_FLAGS:
            return None
        return remote[0].open_reader(remote[1])

    def open(self, ino: int, flags: int) -> tuple[Node, int]:
        """Open a file; a write open copies it up first. Returns (node, fd)."""
        node = self.table.get(ino)
        writing = bool(flags & WRITE_FLAGS)
        if writing:
            path = self.copy_up(node, with_data=not flags & os.O_TRUNC)
        else:
            path = self.real_path(node)
        access = flags & os.O_ACCMODE
        fd = os.open(path, (flags & ~STRIP_FLAGS & ~os.O_ACCMODE)
                     | (os.O_RDWR if access != os.O_RDONLY else os.O_RDONLY) | os.O_NOFOLLOW)
        return node, fd

    # ---- xattrs -----------------------------------------------------------

    def _check_settable(self, name: str) -> None:
        if name == "security.selinux" or name.startswith("system.posix_acl_"):
            # No labels, no ACLs (as getxattr and the shim answer): tools
            # that copy permissions (cp -a, sed -i) then fall back quietly.
            raise err(errno.EOPNOTSUPP)
        if self.layers.names.is_private(name):
            raise err(errno.EPERM)

    def getxattr(self, ino: int, name: str) -> bytes:
        node = self.table.get(ino)
        if name == "security.selinux" or name.startswith("system.posix_acl_"):
            raise err(errno.EOPNOTSUPP)  # as the FUSE shim answers (no labels, no ACLs)
        if self.layers.names.is_private(name) or self.remote_of(node) is not None:
            raise err(errno.ENODATA)
        return os.getxattr(self.real_path(node), name, follow_symlinks=False)

    def listxattr(self, ino: int) -> list[str]:
        node = self.table.get(ino)
        if self.remote_of(node) is not None:
            return []
        names = os.listxattr(self.real_path(node), follow_symlinks=False)
        return [n for n in names if not self.layers.names.is_private(n)]

    def setxattr(self, ino: int, name: str, value: bytes) -> None:
        self._check_settable(name)
        upath = self.copy_up(self.table.get(ino))
        os.setxattr(upath, name, value, follow_symlinks=False)

    def removexattr(self, ino: int, name: str) -> None:
        self._check_settable(name)
        node = self.table.get(ino)
        self.getxattr(ino, name)  # ENODATA first
        os.removexattr(self.copy_up(node), name, follow_symlinks=False)

    def fsync_dir(self, node: Node) -> None:
        """fsync the upper directory of `node` (nothing to do if not copied up)."""
        if not node.in_upper:
            return
        dfd = os.open(self.real_path(node), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
