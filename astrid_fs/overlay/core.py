"""The overlay's core: resolving names over the layers, attributes, copy-up,
remote fetches, and re-reading the layers after they changed.

Semantics of the namespace live in `namespace.py` and of attributes, data
and xattrs in `overlay.py`, both built on this. Errors are `OSError`s
carrying the errno the caller should see. Nothing here ever writes the
lower layer: every mutation goes to `layers.upper` (or the work dir beside
it), after copying up what it needs.

Threading: one daemon, one trio thread, no awaits inside: each operation
runs to completion, so the inode table needs no locks. Remote fetches are
returned as blocking jobs for the caller to run in a worker thread
(`fetching.py`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Container, Iterator, Sequence

from astrid_fs.overlay.copyup import (
    copy_data,
    copy_up,
    copy_up_remote,
    copy_up_synthetic_dir,
)
from astrid_fs.overlay.fetching import RemoteFetches
from astrid_fs.overlay.hardlinks import LinkIndex, relinked
from astrid_fs.overlay.inodes import ROOT_INO, DeviceTags, InodeTable, Node, upper_only_ino
from astrid_fs.overlay.layers import (
    Layers,
    Resolved,
    StatLike,
    SyntheticStat,
    lstat_or_none,
    merged_names,
    resolve_child,
)
from astrid_fs.overlay.whiteout import Origin, get_origin

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
STRIP_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND | getattr(os, "O_DIRECT", 0)


def err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class OverlayCore(RemoteFetches):
    """Resolution and copy-up over `layers`, keyed by overlay inode number."""

    def __init__(self, layers: Layers, tmp_dir: bytes, *, redirects: bool,
                 sync_copy_up: bool = True) -> None:
        self.layers = layers
        self.tmp = tmp_dir
        self.redirects = redirects
        self.sync_copy_up = sync_copy_up
        root_st = os.lstat(layers.lower)
        self.tags = DeviceTags(root_st.st_dev)
        self.table = InodeTable(Node(ROOT_INO, True, b"", True))
        # Beside the work dir, on the upper's filesystem (hard links).
        self.index = LinkIndex(os.path.join(os.path.dirname(tmp_dir), b"astrid-index"),
                               layers.names)
        self.index.prune()

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
        lower_dir = self.lower_only(parent)
        if lower_dir is not None:
            hit = self._lower_child(parent, lower_dir, name)
            if hit is not None:
                return hit
        r = self._resolve(parent, name)
        if r is None:
            raise err(errno.ENOENT)
        return self._interned(parent, name, r)

    def lower_only(self, parent: Node) -> bytes | None:
        """The lower directory of `parent` when it alone shows `parent`'s
        children: no upper directory (so no whiteout, opaque, redirect or
        origin to read), one local lower layer, no remote tree, not the
        lower root (commit staging names are hidden there). Then a child is
        what one lstat of its lower entry says: the cold-walk fast path."""
        if parent.in_upper or not parent.lower or self.layers.remotes \
                or self.layers.stack is not None:
            return None
        return parent.lower

    def _lower_child(self, parent: Node, lower_dir: bytes,
                     name: bytes) -> tuple[Node, StatLike] | None:
        """`name` in a `lower_only` directory, resolved with one lstat
        (ENOENT if absent); None when the general path must decide (a
        hard-linked file: another of its names may have been copied up)."""
        lrel = lower_dir + b"/" + name
        st = lstat_or_none(self.layers.lower_path(lrel))
        if st is None:
            raise err(errno.ENOENT)
        if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
            return None
        node = self.table.intern(self.tags.lower_ino(st.st_dev, st.st_ino),
                                 stat.S_ISDIR(st.st_mode), lrel, False, parent.ino, name)
        return node, st

    def _interned(self, parent: Node, name: bytes, r: Resolved) -> tuple[Node, StatLike]:
        """The node for a resolved entry; a lower name of a hard-linked file
        whose other name was copied up is linked up first (hardlinks.py)."""
        if not r.in_upper and r.lower is not None and LinkIndex.applies(r.st) \
                and self.remote_of_lower(r.lower) is None:
            index = self.index.live(r.st.st_dev, r.st.st_ino)
            if index is not None:
                self._link_up(parent, name, index)
                linked = self._resolve(parent, name)
                if linked is not None:
                    r = linked
        node = self.table.intern(self.ino_of(r), stat.S_ISDIR(r.st.st_mode), r.lower,
                                 r.in_upper, parent.ino, name)
        return node, self._shown(r.st, r.origin)

    def _link_up(self, parent: Node, name: bytes, index: bytes) -> None:
        parent_upper = self.copy_up(parent)
        pst = os.lstat(parent_upper)
        self.index.link_up(index, parent_upper + b"/" + name)
        os.utime(parent_upper, ns=(pst.st_atime_ns, pst.st_mtime_ns), follow_symlinks=False)

    def _shown(self, st: StatLike, origin: Origin | None) -> StatLike:
        """`st` as the view shows it: an indexed hard link's count."""
        if origin is None or st.st_nlink < 2 or not stat.S_ISREG(st.st_mode) \
                or not isinstance(st, os.stat_result):
            return st
        shown = self.index.shown_nlink(st, origin.dev, origin.ino)
        return st if shown == st.st_nlink else relinked(st, shown)

    def children(self, parent_ino: int, names: Sequence[bytes], start: int,
                 unresolved: Container[bytes] = ()
                 ) -> Iterator[tuple[int, bytes, Node | None, StatLike | None]]:
        """Resolve `names[start:]` of one directory (for readdirplus), without
        counting lookups; names that vanished meanwhile are skipped, names
        in `unresolved` come back unresolved (None, None)."""
        parent = self.table.get(parent_ino)
        parent_path = self.path(parent)
        lower_dir = self.lower_only(parent)
        for index in range(start, len(names)):
            name = names[index]
            if name in unresolved:
                yield index, name, None, None
                continue
            try:
                if name == b"." or name == b"..":
                    node, st = self.peek(parent_ino, name)
                    yield index, name, node, st
                    continue
                if lower_dir is not None:
                    hit = self._lower_child(parent, lower_dir, name)
                    if hit is not None:
                        yield index, name, hit[0], hit[1]
                        continue
                r = resolve_child(self.layers, parent_path, parent.in_upper, parent.lower, name)
            except OSError:
                continue
            if r is None:
                continue
            node, st = self._interned(parent, name, r)
            yield index, name, node, st

    def stat(self, node: Node) -> StatLike:
        """Current attributes of `node` (from the layer that shows it)."""
        if node.ino == ROOT_INO:
            return os.lstat(self.layers.upper)
        if not node.in_upper and node.lower is not None:
            lst = self.layers.lower_stat(node.lower)
            if lst is None:
                raise err(errno.ENOENT)
            if isinstance(lst, os.stat_result) and LinkIndex.applies(lst):
                shown = self.index.shown_for_lower(lst)
                if shown is not None:
                    return relinked(lst, shown)
            return lst
        try:
            p = self.path(node)
        except FileNotFoundError:
            if node.fds:
                return os.fstat(node.fds[0])
            raise
        if node.in_upper:
            return self.upper_stat(self.layers.upper_path(p))
        assert node.lower is not None
        st = self.layers.lower_stat(node.lower)
        if st is None:
            raise err(errno.ENOENT)
        return st

    def upper_stat(self, upath: bytes) -> StatLike:
        """lstat of an upper entry as the view shows it (hard-link counts)."""
        ust = os.lstat(upath)
        if ust.st_nlink > 1 and stat.S_ISREG(ust.st_mode):
            return self._shown(ust, get_origin(upath, self.layers.names))
        return ust

    def has_name(self, node: Node) -> bool:
        """False once `node` lost its last name (removed while open)."""
        if node.ino == ROOT_INO:
            return True
        try:
            self.path(node)
        except FileNotFoundError:
            return False
        return True

    def stat_open(self, node: Node, open_st: os.stat_result | None) -> StatLike:
        """Attributes of `node`, which may have lost its last name while open:
        then its open fd's (`open_st`), or what it was when it was removed."""
        if open_st is not None and not self.has_name(node):
            return open_st
        try:
            return self.stat(node)
        except FileNotFoundError:
            if open_st is not None:
                return open_st
            if node.orphan_st is not None:
                return node.orphan_st
            raise

    def real_path(self, node: Node) -> bytes:
        """The local path of the layer entry that currently shows `node`
        (ENOTSUP for an entry of a remote tree: use `remote_of`)."""
        if node.in_upper or node.lower is None:
            return self.layers.upper_path(self.path(node))
        if self.remote_of(node) is not None:
            raise err(errno.ENOTSUP)
        return self.layers.lower_path(node.lower)

    def list_dir(self, node: Node) -> list[bytes]:
        return merged_names(self.layers, self.path(node), node.in_upper, node.lower)

    def list_dir_typed(self, node: Node) -> tuple[list[bytes], dict[bytes, tuple[int, int]]]:
        """`list_dir`, and for a `lower_only` directory the overlay inode
        number and file type of its regular files and symlinks, read from
        the listing itself (d_ino, d_type: no lstat). A non-directory is on
        its directory's device (only a directory can be a mount point; a
        file bind-mounted over a lower file would show its own st_ino).
        The inode number is the one a lookup gives: the lower one, tagged,
        also for a hard-linked file copied up under another name."""
        lower_dir = self.lower_only(node)
        if lower_dir is None:
            return self.list_dir(node), {}
        path = self.layers.lower_path(lower_dir)
        tag = self.tags.lower_ino(os.lstat(path).st_dev, 0)
        names: list[bytes] = []
        typed: dict[bytes, tuple[int, int]] = {}
        with os.scandir(path) as it:
            for entry in it:
                name = os.fsencode(entry.name)
                names.append(name)
                if entry.is_symlink():
                    typed[name] = (tag | entry.inode(), stat.S_IFLNK)
                elif entry.is_file(follow_symlinks=False):
                    typed[name] = (tag | entry.inode(), stat.S_IFREG)
        names.sort()
        return names, typed

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
            parent_rel = self.path(parent)
            rel = parent_rel + b"/" + name if parent_rel else name
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


    # ---- whole filesystem -------------------------------------------------

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.layers.upper)

    def layers_changed(self) -> tuple[list[int], list[tuple[int, bytes]]]:
        """Re-read every known node's layer state (after a commit, discard or
        rollback changed the layers behind the mount) and list what the
        kernel must forget: every known inode's attributes and pages, every
        known name, and every name now in a known directory (negative
        entries). A node whose name still resolves keeps serving, re-pointed
        at whatever shows that name now, so open files keep working."""
        for node in sorted(self.table.nodes(), key=self._depth):
            if node.ino == ROOT_INO:
                continue
            try:
                parent, name = self._parent_of(node)
                r = self._resolve(parent, name)
            except OSError:
                r = None
            if r is None:
                continue  # gone from both layers: open fds still reach the data
            node.in_upper = r.in_upper
            node.lower = r.lower
        for node in self.table.nodes():
            self.table.state_changed(node)
        self.index.prune()
        inodes: list[int] = []
        entries: set[tuple[int, bytes]] = set()
        for node in self.table.nodes():
            inodes.append(node.ino)
            entries.update(node.links)
            if node.is_dir:
                try:
                    entries.update((node.ino, n) for n in self.list_dir(node))
                except OSError:
                    continue
        return inodes, sorted(entries)

    def _depth(self, node: Node) -> int:
        try:
            return self.path(node).count(b"/")
        except OSError:
            return 1 << 30
