"""The overlay's core: resolving names over the layers, attributes, and
re-reading the layers after they changed; copy-up (`copying.py`) and remote
fetches (`fetching.py`) are mixed in.

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
from collections.abc import Container, Iterable, Iterator

from astrid_fs.overlay.copying import CopyUps, err
from astrid_fs.overlay.hardlinks import LinkIndex, relinked
from astrid_fs.overlay.inodes import ROOT_INO, DeviceTags, InodeTable, Node, upper_only_ino
from astrid_fs.overlay.layers import (
    Layers,
    Resolved,
    StatLike,
    lstat_or_none,
    merged_names,
    placed_names,
    resolve_child,
)
from astrid_fs.overlay.whiteout import Origin, Whiteouts, get_origin

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
STRIP_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND | getattr(os, "O_DIRECT", 0)


class OverlayCore(CopyUps):
    """Resolution and copy-up over `layers`, keyed by overlay inode number."""

    def __init__(self, layers: Layers, tmp_dir: bytes, *, redirects: bool,
                 sync_copy_up: bool = True) -> None:
        self.layers = layers
        self.tmp = tmp_dir
        self.whiteouts = Whiteouts(tmp_dir)
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

    def lookup(self, parent_ino: int, name: bytes, made: bool = False) -> tuple[Node, StatLike]:
        """Resolve `name` in a directory and count one kernel lookup on it
        (`made`: an entry just created, inodes.py `intern`)."""
        node, st = self.peek(parent_ino, name, made)
        self.table.add_lookup(node)
        return node, st

    def peek(self, parent_ino: int, name: bytes, made: bool = False) -> tuple[Node, StatLike]:
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
        return self._interned(parent, name, r, made)

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

    def _interned(self, parent: Node, name: bytes, r: Resolved,
                  made: bool = False) -> tuple[Node, StatLike]:
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
                                 r.in_upper, parent.ino, name, made)
        return node, self._shown(r.st, r.origin)

    def _shown(self, st: StatLike, origin: Origin | None) -> StatLike:
        """`st` as the view shows it: an indexed hard link's count."""
        if origin is None or st.st_nlink < 2 or not stat.S_ISREG(st.st_mode) \
                or not isinstance(st, os.stat_result):
            return st
        shown = self.index.shown_nlink(st, origin.dev, origin.ino)
        return st if shown == st.st_nlink else relinked(st, shown)

    def children(self, parent_ino: int, entries: Iterable[tuple[int, bytes]],
                 unresolved: Container[bytes] = ()
                 ) -> Iterator[tuple[int, bytes, Node | None, StatLike | None]]:
        """Resolve the (place, name) `entries` of one directory (for
        readdirplus), without counting lookups; names that vanished meanwhile
        are skipped, names in `unresolved` come back unresolved (None, None)."""
        parent = self.table.get(parent_ino)
        parent_path = self.path(parent)
        lower_dir = self.lower_only(parent)
        for index, name in entries:
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

    def list_dir_placed(self, node: Node) -> list[bytes | None]:
        """`list_dir` in the order a fresh listing places its names
        (layers.py `placed_names`: None holds a hidden lower name's place)."""
        return placed_names(self.layers, self.path(node), node.in_upper, node.lower)

    def list_dir_typed(self, node: Node
                       ) -> tuple[list[bytes | None], dict[bytes, tuple[int, int]]]:
        """`list_dir_placed`, and for a `lower_only` directory the overlay inode
        number and file type of its regular files and symlinks, read from
        the listing itself (d_ino, d_type: no lstat). A non-directory is on
        its directory's device (only a directory can be a mount point; a
        file bind-mounted over a lower file would show its own st_ino).
        The inode number is the one a lookup gives: the lower one, tagged,
        also for a hard-linked file copied up under another name."""
        lower_dir = self.lower_only(node)
        if lower_dir is None:
            return self.list_dir_placed(node), {}
        path = self.layers.lower_path(lower_dir)
        tag = self.tags.lower_ino(os.lstat(path).st_dev, 0)
        names: list[bytes | None] = []
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
