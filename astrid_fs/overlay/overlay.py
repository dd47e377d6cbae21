"""The overlay: FUSE-shaped operations on a lower and an upper layer.

This is where copy-on-write semantics live; `fuse_ops.py` only adapts the
protocol. Errors are `OSError`s carrying the errno the caller should see.
Nothing here ever writes the lower layer: every mutation goes to
`layers.upper` (or the work dir beside it), after copying up what it needs.

Threading: one daemon, one trio thread, no awaits inside: each operation
runs to completion, so the inode table needs no locks.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from astrid_fs.overlay import syscalls
from astrid_fs.overlay.copyup import (
    copy_data,
    copy_up,
    copy_up_remote,
    copy_up_synthetic_dir,
    temp_name,
)
from astrid_fs.overlay.inodes import ROOT_INO, DeviceTags, InodeTable, Node, upper_only_ino
from astrid_fs.overlay.layers import (
    Layers,
    Reader,
    RemoteTree,
    Resolved,
    StatLike,
    SyntheticStat,
    lower_has,
    merged_names,
    resolve_child,
    upper_whiteouts,
)
from astrid_fs.overlay.whiteout import make_whiteout, set_opaque, set_redirect

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
_STRIP_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND | getattr(os, "O_DIRECT", 0)


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclass(frozen=True)
class Owner:
    """Who a new entry belongs to (the caller of the FUSE request)."""

    uid: int
    gid: int


@dataclass(frozen=True)
class SetAttr:
    """Which attributes a setattr changes (None: unchanged)."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


class Overlay:
    """Copy-on-write operations over `layers`, keyed by overlay inode number."""

    def __init__(self, layers: Layers, tmp_dir: bytes, *, redirects: bool,
                 sync_copy_up: bool = True) -> None:
        self.layers = layers
        self.tmp = tmp_dir
        self.redirects = redirects
        self.sync_copy_up = sync_copy_up
        root_st = os.lstat(layers.lower)
        self.tags = DeviceTags(root_st.st_dev)
        self.table = InodeTable(Node(ROOT_INO, True, b"", True))

    # ---- resolution -------------------------------------------------------

    def path(self, node: Node) -> bytes:
        return self.table.path_of(node)

    def ino_of(self, r: Resolved) -> int:
        if r.origin is not None:
            return self.tags.lower_ino(r.origin.dev, r.origin.ino)
        if r.in_upper:
            return upper_only_ino(r.st.st_ino)
        return self.tags.lower_ino(r.st.st_dev, r.st.st_ino)

    def _resolve(self, parent: Node, name: bytes) -> Resolved | None:
        return resolve_child(self.layers, self.path(parent), parent.in_upper, parent.lower, name)

    def lookup(self, parent_ino: int, name: bytes) -> tuple[Node, StatLike]:
        """Resolve `name` in a directory and count one kernel lookup on it."""
        node, st = self.peek(parent_ino, name)
        self.table.add_lookup(node)
        return node, st

    def peek(self, parent_ino: int, name: bytes) -> tuple[Node, StatLike]:
        """Resolve `name` without counting a lookup (FileNotFoundError if absent)."""
        parent = self.table.get(parent_ino)
        if name == b".":
            return parent, self.stat(parent)
        if name == b"..":
            up = self.table.get(parent.links[0][0]) if parent.links else parent
            return up, self.stat(up)
        r = self._resolve(parent, name)
        if r is None:
            raise _err(errno.ENOENT)
        node = self.table.intern(self.ino_of(r), stat.S_ISDIR(r.st.st_mode), r.lower,
                                 r.in_upper, parent_ino, name)
        return node, r.st

    def children(self, parent_ino: int, names: Sequence[bytes],
                 start: int) -> Iterator[tuple[int, bytes, Node, StatLike]]:
        """Resolve `names[start:]` of one directory (for readdirplus), without
        counting lookups; names that vanished meanwhile are skipped."""
        parent = self.table.get(parent_ino)
        parent_path = self.path(parent)
        for index in range(start, len(names)):
            name = names[index]
            try:
                if name == b"." or name == b"..":
                    node, st = self.peek(parent_ino, name)
                    yield index, name, node, st
                    continue
                r = resolve_child(self.layers, parent_path, parent.in_upper, parent.lower, name)
            except OSError:
                continue
            if r is None:
                continue
            node = self.table.intern(self.ino_of(r), stat.S_ISDIR(r.st.st_mode), r.lower,
                                     r.in_upper, parent_ino, name)
            yield index, name, node, r.st

    def stat(self, node: Node) -> StatLike:
        """Current attributes of `node` (from the layer that shows it)."""
        if node.ino == ROOT_INO:
            return os.lstat(self.layers.upper)
        if not node.in_upper and node.lower is not None:
            lst = self.layers.lower_stat(node.lower)
            if lst is None:
                raise _err(errno.ENOENT)
            return lst
        try:
            p = self.path(node)
        except FileNotFoundError:
            if node.fds:
                return os.fstat(node.fds[0])
            raise
        if node.in_upper:
            return os.lstat(self.layers.upper_path(p))
        assert node.lower is not None
        st = self.layers.lower_stat(node.lower)
        if st is None:
            raise _err(errno.ENOENT)
        return st

    def remote_of(self, node: Node) -> tuple[RemoteTree, bytes] | None:
        """The remote tree showing `node` (not copied up), if any."""
        if node.in_upper or node.lower is None or not self.layers.remotes:
            return None
        return self.layers.remote_for(node.lower)

    def real_path(self, node: Node) -> bytes:
        """The local path of the layer entry that currently shows `node`
        (ENOTSUP for an entry of a remote tree: use `remote_of`)."""
        if node.in_upper or node.lower is None:
            return self.layers.upper_path(self.path(node))
        if self.remote_of(node) is not None:
            raise _err(errno.ENOTSUP)
        return self.layers.lower_path(node.lower)

    def list_dir(self, node: Node) -> list[bytes]:
        return merged_names(self.layers, self.path(node), node.in_upper, node.lower)

    def lower_mtime_ns(self, node: Node) -> int:
        """mtime of the lower entry merged into `node` (0 if none)."""
        if node.lower is None:
            return 0
        st = self.layers.lower_stat(node.lower)
        return 0 if st is None else st.st_mtime_ns

    def dir_signature(self, node: Node) -> tuple[int, int]:
        """Changes whenever either layer's directory changes (mtimes)."""
        upper = os.lstat(self.layers.upper_path(self.path(node))).st_mtime_ns \
            if node.in_upper else 0
        lst = self.layers.lower_stat(node.lower) if node.lower is not None else None
        return upper, lst.st_mtime_ns if lst is not None else 0

    def is_merged(self, node: Node) -> bool:
        return node.is_dir and node.in_upper and node.lower is not None

    # ---- copy-up ----------------------------------------------------------

    def _parent_of(self, node: Node) -> tuple[Node, bytes]:
        for p, n in node.links:
            if p in self.table:
                return self.table.get(p), n
        raise _err(errno.ENOENT)

    def copy_up(self, node: Node, *, with_data: bool = True) -> bytes:
        """Make sure `node` exists in the upper layer; return its upper path."""
        if node.in_upper:
            return self.layers.upper_path(self.path(node))
        parent, _ = self._parent_of(node)
        parent_upper = self.copy_up(parent)
        # A copy-up is not a change to the directory: keep its times (as
        # kernel overlayfs does), or the parent's mtime would jump to "now".
        pst = os.lstat(parent_upper)
        rel = self.path(node)
        upath = self.layers.upper_path(rel)
        assert node.lower is not None
        remote = self.remote_of(node)
        lst = self.layers.lower_stat(node.lower) if self.layers.remotes else None
        if remote is not None:
            copy_up_remote(remote[0], remote[1], node.lower, upath, self.tmp, self.layers.names,
                           with_data=with_data, sync=self.sync_copy_up)
        elif isinstance(lst, SyntheticStat):
            # A directory that exists only above a remote mount point (`mnt`
            # for /mnt/s3): nothing to copy, just make it, keeping its inode.
            copy_up_synthetic_dir(lst, node.lower, upath, self.tmp, self.layers.names)
        else:
            copy_up(self.layers.lower_path(node.lower), upath, self.tmp, self.layers.names,
                    node.lower, with_data=with_data, sync=self.sync_copy_up)
        os.utime(parent_upper, ns=(pst.st_atime_ns, pst.st_mtime_ns), follow_symlinks=False)
        node.in_upper = True
        if not node.is_dir:
            node.lower = None
        return upath

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
                    raise _err(errno.ENOENT)
                src = os.open(self.layers.lower_path(node.lower), os.O_RDONLY)
                try:
                    copy_data(src, fd, os.fstat(src).st_size)
                finally:
                    os.close(src)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ---- creating entries -------------------------------------------------

    def _new_entry_path(self, parent: Node, name: bytes) -> tuple[bytes, bool]:
        """Upper path for a new entry `name` in `parent`; and whether a
        whiteout (or a lower entry) sits there, i.e. a dir needs to be opaque."""
        upper_parent = self.copy_up(parent)
        upath = upper_parent + b"/" + name
        try:
            st = os.lstat(upath)
        except FileNotFoundError:
            return upath, lower_has(self.layers, parent.lower, name)
        if self.layers.is_whiteout(upath, st):
            return upath, True
        raise _err(errno.EEXIST)

    def _owner_of_new(self, parent_upper: bytes, owner: Owner) -> tuple[int, int, bool]:
        pst = os.lstat(parent_upper)
        sgid = bool(pst.st_mode & stat.S_ISGID)
        return owner.uid, (pst.st_gid if sgid else owner.gid), sgid

    def _finish_new(self, parent_ino: int, name: bytes) -> tuple[Node, StatLike]:
        node, st = self.lookup(parent_ino, name)
        return node, st

    def _place(self, tmp: bytes, upath: bytes, over_whiteout: bool) -> None:
        """Move a fully built entry from the work dir to its upper path."""
        if over_whiteout and os.path.isdir(tmp) and not os.path.islink(tmp):
            # A directory cannot replace a whiteout by rename: swap, then drop it.
            syscalls.renameat2(tmp, upath, syscalls.RENAME_EXCHANGE)
            os.unlink(tmp)
        else:
            os.rename(tmp, upath)

    def mknod(self, parent_ino: int, name: bytes, mode: int, rdev: int,
              owner: Owner) -> tuple[Node, StatLike]:
        parent = self.table.get(parent_ino)
        upath, shadowed = self._new_entry_path(parent, name)
        uid, gid, _ = self._owner_of_new(os.path.dirname(upath), owner)
        tmp = temp_name(self.tmp)
        if stat.S_ISREG(mode):
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        else:
            os.mknod(tmp, mode, rdev)
        os.lchown(tmp, uid, gid)
        os.chmod(tmp, stat.S_IMODE(mode))
        self._place(tmp, upath, shadowed)
        return self._finish_new(parent_ino, name)

    def mkdir(self, parent_ino: int, name: bytes, mode: int,
              owner: Owner) -> tuple[Node, StatLike]:
        parent = self.table.get(parent_ino)
        upath, shadowed = self._new_entry_path(parent, name)
        uid, gid, sgid = self._owner_of_new(os.path.dirname(upath), owner)
        tmp = temp_name(self.tmp)
        os.mkdir(tmp, 0o700)
        try:
            os.lchown(tmp, uid, gid)
            os.chmod(tmp, stat.S_IMODE(mode) | (stat.S_ISGID if sgid else 0))
            if shadowed:
                set_opaque(tmp, self.layers.names)
            self._place(tmp, upath, shadowed)
        except BaseException:
            if os.path.isdir(tmp):
                os.rmdir(tmp)
            raise
        return self._finish_new(parent_ino, name)

    def symlink(self, parent_ino: int, name: bytes, target: bytes,
                owner: Owner) -> tuple[Node, StatLike]:
        parent = self.table.get(parent_ino)
        upath, shadowed = self._new_entry_path(parent, name)
        uid, gid, _ = self._owner_of_new(os.path.dirname(upath), owner)
        tmp = temp_name(self.tmp)
        os.symlink(target, tmp)
        os.lchown(tmp, uid, gid)
        self._place(tmp, upath, shadowed)
        return self._finish_new(parent_ino, name)

    def create(self, parent_ino: int, name: bytes, mode: int, flags: int,
               owner: Owner) -> tuple[Node, StatLike, int]:
        """Create and open a regular file; returns its node, stat and an fd."""
        parent = self.table.get(parent_ino)
        upath, shadowed = self._new_entry_path(parent, name)
        uid, gid, _ = self._owner_of_new(os.path.dirname(upath), owner)
        open_flags = (flags & ~_STRIP_FLAGS & ~os.O_ACCMODE) | os.O_RDWR
        if shadowed:
            tmp = temp_name(self.tmp)
            fd = os.open(tmp, open_flags | os.O_CREAT | os.O_EXCL, 0o600)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, stat.S_IMODE(mode))
            self._place(tmp, upath, True)
        else:
            fd = os.open(upath, open_flags | os.O_CREAT | os.O_EXCL, stat.S_IMODE(mode))
            os.fchown(fd, uid, gid)
            os.fchmod(fd, stat.S_IMODE(mode))
        node, st = self._finish_new(parent_ino, name)
        return node, st, fd

    def link(self, ino: int, parent_ino: int, name: bytes) -> tuple[Node, StatLike]:
        node = self.table.get(ino)
        if node.is_dir:
            raise _err(errno.EPERM)
        src = self.copy_up(node)
        parent = self.table.get(parent_ino)
        upath, shadowed = self._new_entry_path(parent, name)
        if shadowed and os.path.lexists(upath):
            tmp = temp_name(self.tmp)
            os.link(src, tmp)
            os.rename(tmp, upath)
        else:
            os.link(src, upath)
        return self._finish_new(parent_ino, name)

    # ---- removing entries -------------------------------------------------

    def _replace_with_whiteout(self, upath: bytes, is_dir: bool) -> None:
        tmp = temp_name(self.tmp)
        make_whiteout(tmp)
        if is_dir:
            syscalls.renameat2(tmp, upath, syscalls.RENAME_EXCHANGE)
            os.rmdir(tmp)
        else:
            os.rename(tmp, upath)

    def _remove(self, parent_ino: int, name: bytes, want_dir: bool) -> None:
        parent = self.table.get(parent_ino)
        node, _ = self.peek(parent_ino, name)
        if node.is_dir != want_dir:
            raise _err(errno.ENOTDIR if want_dir else errno.EISDIR)
        if want_dir and self.list_dir(node):
            raise _err(errno.ENOTEMPTY)
        needs_whiteout = lower_has(self.layers, parent.lower, name)
        upper_parent = self.copy_up(parent)
        upath = upper_parent + b"/" + name
        if node.in_upper:
            if want_dir:
                for w in upper_whiteouts(self.layers, self.path(node)):
                    os.unlink(upath + b"/" + w)
            if needs_whiteout:
                self._replace_with_whiteout(upath, want_dir)
            elif want_dir:
                os.rmdir(upath)
            else:
                os.unlink(upath)
        else:
            make_whiteout(upath)
        self.table.unlink(node, parent_ino, name)

    def unlink(self, parent_ino: int, name: bytes) -> None:
        self._remove(parent_ino, name, want_dir=False)

    def rmdir(self, parent_ino: int, name: bytes) -> None:
        self._remove(parent_ino, name, want_dir=True)
        self.layers.long_paths.forget()

    # ---- rename -----------------------------------------------------------

    def rename(self, old_parent_ino: int, old_name: bytes, new_parent_ino: int,
               new_name: bytes, flags: int) -> None:
        if flags & syscalls.RENAME_EXCHANGE:
            self._exchange(old_parent_ino, old_name, new_parent_ino, new_name)
            return
        old_parent = self.table.get(old_parent_ino)
        new_parent = self.table.get(new_parent_ino)
        src, _ = self.peek(old_parent_ino, old_name)
        try:
            dst: Node | None = self.peek(new_parent_ino, new_name)[0]
        except FileNotFoundError:
            dst = None
        if dst is not None:
            if flags & syscalls.RENAME_NOREPLACE:
                raise _err(errno.EEXIST)
            if dst is src:
                return
            if src.is_dir and not dst.is_dir:
                raise _err(errno.ENOTDIR)
            if not src.is_dir and dst.is_dir:
                raise _err(errno.EISDIR)
            if dst.is_dir and self.list_dir(dst):
                raise _err(errno.ENOTEMPTY)
        src_shows_lower = lower_has(self.layers, old_parent.lower, old_name)
        dst_shadows_lower = lower_has(self.layers, new_parent.lower, new_name)
        old_upper = self.copy_up(old_parent) + b"/" + old_name
        new_upper = self.copy_up(new_parent) + b"/" + new_name
        if src.is_dir:
            self._prepare_dir_move(src)
        else:
            self.copy_up(src)
        self._clear_target(new_upper, dst)
        if src_shows_lower:
            try:
                syscalls.renameat2(old_upper, new_upper, syscalls.RENAME_WHITEOUT)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
                    raise
                os.rename(old_upper, new_upper)
                make_whiteout(old_upper)
        else:
            os.rename(old_upper, new_upper)
        if src.is_dir and src.lower is None and dst_shadows_lower:
            set_opaque(new_upper, self.layers.names)
        if dst is not None:
            self.table.unlink(dst, new_parent_ino, new_name)
        self.table.move(src, (old_parent_ino, old_name), (new_parent_ino, new_name))
        if src.is_dir:
            self.layers.long_paths.forget()

    def _exchange(self, old_parent_ino: int, old_name: bytes, new_parent_ino: int,
                  new_name: bytes) -> None:
        """renameat2(RENAME_EXCHANGE): both names stay, their entries swap."""
        a, _ = self.peek(old_parent_ino, old_name)
        b, _ = self.peek(new_parent_ino, new_name)  # ENOENT if missing
        if a is b:
            return
        for node in (a, b):
            if node.is_dir:
                self._prepare_dir_move(node)
            else:
                self.copy_up(node)
        old_upper = self.copy_up(self.table.get(old_parent_ino)) + b"/" + old_name
        new_upper = self.copy_up(self.table.get(new_parent_ino)) + b"/" + new_name
        syscalls.renameat2(old_upper, new_upper, syscalls.RENAME_EXCHANGE)
        self.table.move(a, (old_parent_ino, old_name), (new_parent_ino, new_name))
        self.table.move(b, (new_parent_ino, new_name), (old_parent_ino, old_name))
        # A directory with no lower part of its own must not merge with a
        # lower entry at its new name.
        for node, parent_ino, name, upath in ((a, new_parent_ino, new_name, new_upper),
                                              (b, old_parent_ino, old_name, old_upper)):
            if node.is_dir and node.lower is None and lower_has(
                    self.layers, self.table.get(parent_ino).lower, name):
                set_opaque(upath, self.layers.names)
        if a.is_dir or b.is_dir:
            self.layers.long_paths.forget()

    def _prepare_dir_move(self, src: Node) -> None:
        """Give a directory that merges a lower dir what it needs to move."""
        if src.lower is None:
            return
        upath = self.copy_up(src)
        if not self.redirects:
            self._copy_up_tree(src)
            set_opaque(upath, self.layers.names)
            src.lower = None
            return
        set_redirect(upath, self.layers.names, "/" + os.fsdecode(src.lower))

    def _copy_up_tree(self, node: Node) -> None:
        """Copy a merged directory up whole (for uppers without redirects)."""
        for name in self.list_dir(node):
            child, _ = self.peek(node.ino, name)
            self.copy_up(child)
            if child.is_dir:
                self._copy_up_tree(child)
                if child.lower is not None:
                    set_opaque(self.layers.upper_path(self.path(child)), self.layers.names)
                    child.lower = None

    def _clear_target(self, new_upper: bytes, dst: Node | None) -> None:
        """Make the upper path at a rename target replaceable by rename(2)."""
        try:
            st = os.lstat(new_upper)
        except FileNotFoundError:
            return
        if self.layers.is_whiteout(new_upper, st):
            os.unlink(new_upper)
        elif stat.S_ISDIR(st.st_mode) and dst is not None:
            for w in upper_whiteouts(self.layers, self.path(dst)):
                os.unlink(new_upper + b"/" + w)

    # ---- attributes and data ----------------------------------------------

    def setattr(self, ino: int, change: SetAttr, fd: int | None) -> os.stat_result:
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
        return os.lstat(upath)

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

    def open_remote(self, ino: int, flags: int) -> tuple[Node, Reader] | None:
        """For a read-only open of a file still in a remote tree: a reader.
        None when `open` applies (local, copied up, or a write open)."""
        node = self.table.get(ino)
        remote = self.remote_of(node)
        if remote is None or flags & _WRITE_FLAGS:
            return None
        return node, remote[0].open_reader(remote[1])

    def open(self, ino: int, flags: int) -> tuple[Node, int]:
        """Open a file; a write open copies it up first. Returns (node, fd)."""
        node = self.table.get(ino)
        writing = bool(flags & _WRITE_FLAGS)
        if writing:
            path = self.copy_up(node, with_data=not flags & os.O_TRUNC)
        else:
            path = self.real_path(node)
        access = flags & os.O_ACCMODE
        fd = os.open(path, (flags & ~_STRIP_FLAGS & ~os.O_ACCMODE)
                     | (os.O_RDWR if access != os.O_RDONLY else os.O_RDONLY) | os.O_NOFOLLOW)
        return node, fd

    # ---- xattrs -----------------------------------------------------------

    def _check_public(self, name: str) -> None:
        if self.layers.names.is_private(name):
            raise _err(errno.EPERM)

    def getxattr(self, ino: int, name: str) -> bytes:
        node = self.table.get(ino)
        if name == "security.selinux" or name.startswith("system.posix_acl_"):
            raise _err(errno.EOPNOTSUPP)  # as the FUSE shim answers (no labels, no ACLs)
        if self.layers.names.is_private(name) or self.remote_of(node) is not None:
            raise _err(errno.ENODATA)
        return os.getxattr(self.real_path(node), name, follow_symlinks=False)

    def listxattr(self, ino: int) -> list[str]:
        node = self.table.get(ino)
        if self.remote_of(node) is not None:
            return []
        names = os.listxattr(self.real_path(node), follow_symlinks=False)
        return [n for n in names if not self.layers.names.is_private(n)]

    def setxattr(self, ino: int, name: str, value: bytes) -> None:
        self._check_public(name)
        upath = self.copy_up(self.table.get(ino))
        os.setxattr(upath, name, value, follow_symlinks=False)

    def removexattr(self, ino: int, name: str) -> None:
        self._check_public(name)
        node = self.table.get(ino)
        self.getxattr(ino, name)  # ENODATA first
        os.removexattr(self.copy_up(node), name, follow_symlinks=False)

    # ---- whole filesystem -------------------------------------------------

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.layers.upper)

    def refresh(self) -> Iterator[Node]:
        """Re-read every known node's layer state from disk (after a commit,
        discard or rollback changed the layers). Yields nodes that vanished."""
        for node in sorted(self.table.nodes(), key=self._depth):
            if node.ino == ROOT_INO:
                continue
            try:
                parent, name = self._parent_of(node)
                r = self._resolve(parent, name)
            except OSError:
                r = None
            if r is None or self.ino_of(r) != node.ino:
                yield node
                continue
            node.in_upper = r.in_upper
            node.lower = r.lower

    def _depth(self, node: Node) -> int:
        try:
            return self.path(node).count(b"/")
        except OSError:
            return 1 << 30
