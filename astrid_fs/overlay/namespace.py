"""The overlay's namespace operations: creating, removing and renaming
entries in the merged tree (whiteouts, opaque dirs, redirects, copy-up of
parents). Every new entry is built in the work dir and moved into place.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from astrid_fs.overlay import basecontent, syscalls
from astrid_fs.overlay.copying import err
from astrid_fs.overlay.copyup import temp_name
from astrid_fs.overlay.core import STRIP_FLAGS, OverlayCore
from astrid_fs.overlay.inodes import Node
from astrid_fs.overlay.layers import StatLike, lower_has, lstat_or_none, upper_whiteouts
from astrid_fs.overlay.rules import (
    Creation,
    DirMove,
    Kind,
    Removal,
    creation,
    dir_move,
    removal,
)
from astrid_fs.overlay.whiteout import set_opaque, set_redirect


@dataclass(frozen=True)
class Owner:
    """Who a new entry belongs to (the caller of the FUSE request)."""

    uid: int
    gid: int


class Namespace(OverlayCore):
    """Entry creation, removal and rename on top of `OverlayCore`."""

    # ---- creating entries -------------------------------------------------

    def _new_entry_path(self, parent: Node, name: bytes,
                        is_dir: bool = False) -> tuple[bytes, Creation]:
        """Upper path for a new entry `name` in `parent`, and the plan for
        putting it there (rules.creation): over a whiteout, opaque or not."""
        upper_parent = self.copy_up(parent)
        upath = upper_parent + b"/" + name
        st = lstat_or_none(upath)
        if st is None:
            upper = Kind.MISSING
        elif self.layers.is_whiteout(upath, st):
            upper = Kind.WHITEOUT
        else:
            raise err(errno.EEXIST)
        plan = creation(upper, lower_has(self.layers, parent.lower, name), is_dir)
        if plan is None:
            raise err(errno.EEXIST)  # the kernel looks up first; a racing project edit
        return upath, plan

    def _owner_of_new(self, parent_upper: bytes, owner: Owner) -> tuple[int, int, bool]:
        pst = os.lstat(parent_upper)
        sgid = bool(pst.st_mode & stat.S_ISGID)
        return owner.uid, (pst.st_gid if sgid else owner.gid), sgid

    def _finish_new(self, parent_ino: int, name: bytes, made: bool = True
                    ) -> tuple[Node, StatLike]:
        """The entry just made (`made`: a new inode; else another name of one)."""
        return self.lookup(parent_ino, name, made)

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
        upath, plan = self._new_entry_path(parent, name)
        uid, gid, _ = self._owner_of_new(os.path.dirname(upath), owner)
        tmp = temp_name(self.tmp)
        if stat.S_ISREG(mode):
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        else:
            os.mknod(tmp, mode, rdev)
        os.lchown(tmp, uid, gid)
        os.chmod(tmp, stat.S_IMODE(mode))
        self._place(tmp, upath, plan.over_whiteout)
        return self._finish_new(parent_ino, name)

    def mkdir(self, parent_ino: int, name: bytes, mode: int,
              owner: Owner) -> tuple[Node, StatLike]:
        parent = self.table.get(parent_ino)
        upath, plan = self._new_entry_path(parent, name, is_dir=True)
        uid, gid, sgid = self._owner_of_new(os.path.dirname(upath), owner)
        tmp = temp_name(self.tmp)
        os.mkdir(tmp, 0o700)
        try:
            os.lchown(tmp, uid, gid)
            os.chmod(tmp, stat.S_IMODE(mode) | (stat.S_ISGID if sgid else 0))
            if plan.opaque:
                set_opaque(tmp, self.layers.names)
            self._place(tmp, upath, plan.over_whiteout)
        except BaseException:
            if os.path.isdir(tmp):
                os.rmdir(tmp)
            raise
        return self._finish_new(parent_ino, name)

    def symlink(self, parent_ino: int, name: bytes, target: bytes,
                owner: Owner) -> tuple[Node, StatLike]:
        parent = self.table.get(parent_ino)
        upath, plan = self._new_entry_path(parent, name)
        uid, gid, _ = self._owner_of_new(os.path.dirname(upath), owner)
        tmp = temp_name(self.tmp)
        os.symlink(target, tmp)
        os.lchown(tmp, uid, gid)
        self._place(tmp, upath, plan.over_whiteout)
        return self._finish_new(parent_ino, name)

    def create(self, parent_ino: int, name: bytes, mode: int, flags: int,
               owner: Owner) -> tuple[Node, StatLike, int]:
        """Create and open a regular file; returns its node, stat and an fd."""
        parent = self.table.get(parent_ino)
        upath, plan = self._new_entry_path(parent, name)
        uid, gid, _ = self._owner_of_new(os.path.dirname(upath), owner)
        open_flags = (flags & ~STRIP_FLAGS & ~os.O_ACCMODE) | os.O_RDWR
        if plan.over_whiteout:
            tmp = temp_name(self.tmp)
            fd = os.open(tmp, open_flags | os.O_CREAT | os.O_EXCL, 0o600)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, stat.S_IMODE(mode))
            self._place(tmp, upath, plan.over_whiteout)
        else:
            fd = os.open(upath, open_flags | os.O_CREAT | os.O_EXCL, stat.S_IMODE(mode))
            os.fchown(fd, uid, gid)
            os.fchmod(fd, stat.S_IMODE(mode))
        node, st = self._finish_new(parent_ino, name)
        return node, st, fd

    def link(self, ino: int, parent_ino: int, name: bytes) -> tuple[Node, StatLike]:
        node = self.table.get(ino)
        if node.is_dir:
            raise err(errno.EPERM)
        src = self.copy_up(node)
        parent = self.table.get(parent_ino)
        upath, plan = self._new_entry_path(parent, name)
        if plan.over_whiteout:
            tmp = temp_name(self.tmp)
            os.link(src, tmp)
            os.rename(tmp, upath)
        else:
            os.link(src, upath)
        return self._finish_new(parent_ino, name, made=False)

    # ---- removing entries -------------------------------------------------

    def _keep_base(self, node: Node) -> None:
        """Keep what a lower file held before the session hides it without a
        copy-up (`rm`, a rename over it): the base of later merges
        (basecontent.py). A remote object is kept only when its content is
        already spooled: hiding it never waits for the network."""
        if node.in_upper or node.is_dir or node.lower is None:
            return
        remote = self.remote_of(node)
        if remote is None:
            basecontent.keep_local(self.tmp, node.lower, self.layers.lower_path(node.lower))
            return
        tree, rel = remote
        if not tree.is_warm(rel, data=True):
            return
        st = tree.stat(rel)
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size <= basecontent.LIMIT:
            fetch = basecontent.via_fd(self.tmp, lambda fd: tree.fetch_to(rel, fd))
            basecontent.keep(self.tmp, node.lower, fetch, st.st_mtime_ns)

    def _replace_with_whiteout(self, upath: bytes, is_dir: bool) -> None:
        tmp = temp_name(self.tmp)
        self.whiteouts.make(tmp)
        if is_dir:
            syscalls.renameat2(tmp, upath, syscalls.RENAME_EXCHANGE)
            os.rmdir(tmp)
        else:
            os.rename(tmp, upath)

    def _remove(self, parent_ino: int, name: bytes, want_dir: bool,
                before: Callable[[Node, StatLike], None] | None = None) -> None:
        parent = self.table.get(parent_ino)
        node, st = self.peek(parent_ino, name)
        if node.is_dir != want_dir:
            raise err(errno.ENOTDIR if want_dir else errno.EISDIR)
        if want_dir and self.list_dir(node):
            raise err(errno.ENOTEMPTY)
        if before is not None:
            before(node, st)
        upper_parent = self.copy_up(parent)
        upath = upper_parent + b"/" + name
        self._keep_base(node)
        self.lower_alias_removed(node)
        upper = (Kind.DIR if want_dir else Kind.OTHER) if node.in_upper else Kind.MISSING
        plan = removal(upper, lower_has(self.layers, parent.lower, name))
        if node.in_upper and want_dir:
            for w in upper_whiteouts(self.layers, self.path(node)):
                os.unlink(upath + b"/" + w)
        if plan is Removal.REPLACE_WITH_WHITEOUT:
            self._replace_with_whiteout(upath, want_dir)
        elif plan is Removal.WHITEOUT:
            self.whiteouts.make(upath)
        elif want_dir:
            os.rmdir(upath)
        else:
            os.unlink(upath)
        self.table.unlink(node, parent_ino, name, st)

    def unlink(self, parent_ino: int, name: bytes,
               before: Callable[[Node, StatLike], None] | None = None) -> None:
        """Remove file `name`; `before(node, its stat)` is called once it is
        known to be one, before its name goes."""
        self._remove(parent_ino, name, want_dir=False, before=before)

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
            dst, dst_st = self.peek(new_parent_ino, new_name)
        except FileNotFoundError:
            dst, dst_st = None, None
        if dst is not None:
            if flags & syscalls.RENAME_NOREPLACE:
                raise err(errno.EEXIST)
            if dst is src:
                return
            if src.is_dir and not dst.is_dir:
                raise err(errno.ENOTDIR)
            if not src.is_dir and dst.is_dir:
                raise err(errno.EISDIR)
            if dst.is_dir and self.list_dir(dst):
                raise err(errno.ENOTEMPTY)
        src_shows_lower = lower_has(self.layers, old_parent.lower, old_name)
        dst_shadows_lower = lower_has(self.layers, new_parent.lower, new_name)
        old_upper = self.copy_up(old_parent) + b"/" + old_name
        new_upper = self.copy_up(new_parent) + b"/" + new_name
        if src.is_dir:
            self._prepare_dir_move(src)
        else:
            self.copy_up(src)
        if dst is not None:
            self._keep_base(dst)
            self.lower_alias_removed(dst)
        self._clear_target(new_upper, dst)
        if src_shows_lower:
            try:
                syscalls.renameat2(old_upper, new_upper, syscalls.RENAME_WHITEOUT)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
                    raise
                os.rename(old_upper, new_upper)
                self.whiteouts.make(old_upper)
        else:
            os.rename(old_upper, new_upper)
        if src.is_dir and src.lower is None and dst_shadows_lower:
            set_opaque(new_upper, self.layers.names)
        if dst is not None:
            self.table.unlink(dst, new_parent_ino, new_name, dst_st)
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
        how = dir_move(src.lower is not None, self.redirects)
        if how is DirMove.RENAME or src.lower is None:
            return
        upath = self.copy_up(src)
        if how is DirMove.COPY_UP_TREE:
            self._copy_up_tree(src)
            set_opaque(upath, self.layers.names)
            src.lower = None
            self.table.state_changed(src)
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
                    self.table.state_changed(child)

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
