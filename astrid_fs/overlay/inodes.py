"""The overlay's inode table: overlay inode numbers, names and lookup counts.

Invariants (the FUSE protocol's, and ours):
- An overlay inode number is derived, not allocated: 1 for the root, the
  lower inode number (tagged by device) for anything whose origin is in the
  lower layer — before or after copy-up — and the upper inode number tagged
  with UPPER_ONLY_INO_TAG for entries that exist only in the upper layer. So
  `st_ino` is stable across copy-up and across remounts.
- A node lives while the kernel holds a lookup on it or a file handle is
  open on it. Lookups are counted here (lookup, create, mkdir, ..., and each
  accepted readdirplus entry); `forget` subtracts and never raises.
- A node's names are the (parent inode, name) links through which it was
  reached; a directory has at most one, a file has one per hard link the
  kernel has seen. `path_of` walks the first link of each ancestor.
- An upper-only inode number is the upper file's, which ext4 gives again as
  soon as the file is gone, possibly before the kernel's FORGET of the old
  one came (a process held it). A new entry of a number still in the table
  gets a new node with the next `generation` (the kernel then takes it for
  another inode) and keeps the old node's lookups: the FORGET that comes
  names the number only, and subtracts them. (A node replaced because its
  type changed keeps them too.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from astrid_fs.overlay.layers import StatLike
from astrid_fs.overlay.whiteout import UPPER_ONLY_INO_TAG

ROOT_INO = 1
_DEV_SHIFT = 48


@dataclass(eq=False, slots=True)
class Node:
    """One overlay inode as the daemon knows it.

    `lower` is the lower-layer path (relative, bytes, b"" for the lower root)
    this entry is drawn from — for a directory, the lower directory merged
    into it (None when opaque or upper-only); `in_upper` says whether an
    upper entry exists. Both are caches of the on-disk state that only this
    daemon changes while mounted (and that `refresh` re-reads on request).
    """

    ino: int
    is_dir: bool
    lower: bytes | None
    in_upper: bool
    links: list[tuple[int, bytes]] = field(default_factory=list)
    lookups: int = 0
    fds: list[int] = field(default_factory=list)  # open file handles' fds
    # What it was when it lost its last name (an open directory or special
    # file stays stat-able, with nlink 0, as on a plain filesystem).
    orphan_st: StatLike | None = None
    generation: int = 0  # (see the module's invariants)


def _next_generation(old: Node) -> int:
    """The generation of a new inode given `old`'s number: the next for an
    upper-only number; 0 for a lower file's, as the shim's own replies say
    (lookup_table.py), so the two never disagree (a lower entry's type
    changed behind the mount is told apart by its type)."""
    return old.generation + 1 if old.ino & UPPER_ONLY_INO_TAG else 0


class DeviceTags:
    """Small integers for the lower devices seen, so lower inode numbers from
    different filesystems (nested mounts in the lower) do not collide."""

    def __init__(self, root_dev: int) -> None:
        self._tags: dict[int, int] = {root_dev: 0}
        # Told of each new tag (the shim's LOOKUP table, fuse/lookup_table.py).
        self.on_new: Callable[[int, int], None] | None = None

    def lower_ino(self, dev: int, ino: int) -> int:
        tag = self._tags.get(dev)
        if tag is None:
            tag = self._tags[dev] = len(self._tags)
            if self.on_new is not None:
                self.on_new(dev, tag)
        return (tag << _DEV_SHIFT) | ino

    def items(self) -> list[tuple[int, int]]:
        """(device, tag) pairs seen so far."""
        return list(self._tags.items())


def upper_only_ino(upper_ino: int) -> int:
    return UPPER_ONLY_INO_TAG | upper_ino


class UnknownInode(KeyError):
    """An inode number the table does not hold (the FUSE adapter answers
    ESTALE; any other KeyError in a request is a bug, logged)."""


class InodeTable:
    """Overlay inode number → Node, with lookup counting."""

    def __init__(self, root: Node) -> None:
        self._nodes: dict[int, Node] = {ROOT_INO: root}
        root.lookups = 1  # the kernel's implicit reference to the root
        # Paths of directories, dropped whole whenever any directory's name
        # changes (rare): most requests name a child of a known directory.
        self._dir_paths: dict[int, bytes] = {}
        # Told when a node's layer state may have changed (`watch`), and
        # when a directory is dropped (the shim's tables, fuse/lookup_table.py,
        # and the inode fds, files.py).
        self._watchers: tuple[Callable[[Node], None], ...] = ()
        self.drop_watch: Callable[[int], None] | None = None
        # Told when any directory's path may have changed (a directory
        # renamed, removed or given another name): the shim's upper paths.
        self.paths_watch: Callable[[], None] | None = None

    def __contains__(self, ino: int) -> bool:
        return ino in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, ino: int) -> Node:
        """The node for `ino`; UnknownInode if the kernel asks for one we forgot."""
        try:
            return self._nodes[ino]
        except KeyError:
            raise UnknownInode(ino) from None

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def intern(self, ino: int, is_dir: bool, lower: bytes | None, in_upper: bool,
               parent: int, name: bytes, made: bool = False) -> Node:
        """Find or create the node for `ino` and record the link it was reached by.

        Updates the cached layer state: a fresh lookup is the truth. `made`:
        the entry was just created (so a node of its number is another
        file's, whose number was given again).
        """
        node = self._nodes.get(ino)
        changed = False
        if node is None:
            node = self._nodes[ino] = Node(ino, is_dir, lower, in_upper)
        elif made or node.is_dir != is_dir:
            if node.is_dir:
                self._dir_gone(ino)
            node = self._nodes[ino] = Node(ino, is_dir, lower, in_upper, lookups=node.lookups,
                                           generation=_next_generation(node))
        elif node.lower != lower or node.in_upper != in_upper:
            # Another request moved it between layers (a hard link's other
            # name copied up, say): whoever holds an fd on the old layer's
            # file must hear of it, as from a copy-up.
            node.lower = lower
            node.in_upper = in_upper
            changed = True
        self._link(node, (parent, name))
        if is_dir or changed:
            for watcher in self._watchers:
                watcher(node)
        return node

    def add_lower_lookups(self, found: Iterable[tuple[int, int, bool, bytes]]) -> int:
        """Count one lookup each of entries found in directories only the
        lower layer shows — (parent inode, inode, is a directory, name), the
        node's lower path being its parent's plus the name — as `intern` and
        `add_lookup` would, in one pass and without the directory watch (the
        finder, the FUSE shim, already knows). Entries under an unknown
        parent are skipped; returns how many were counted."""
        nodes = self._nodes
        counted = 0
        for parent_ino, ino, is_dir, name in found:
            parent = nodes.get(parent_ino)
            if parent is None:
                continue
            lower = (parent.lower or b"") + b"/" + name
            link = (parent_ino, name)
            node = nodes.get(ino)
            if node is None or node.is_dir != is_dir:
                # (the shim answered with generation 0, as for any lower file)
                nodes[ino] = Node(ino, is_dir, lower, False, [link],
                                  1 if node is None else node.lookups + 1)
                if is_dir:
                    self._dir_paths.pop(ino, None)
            else:
                node.lower = lower
                node.in_upper = False
                self._link(node, link)
                node.lookups += 1
            counted += 1
        return counted

    def watch(self, watcher: Callable[[Node], None]) -> None:
        """Call `watcher(node)` whenever `node`'s layer state may have
        changed: a copy-up, a directory move, the layers re-read, its last
        name removed, and a directory reached by `intern` (which may be its
        first sight)."""
        self._watchers = (*self._watchers, watcher)

    def state_changed(self, node: Node) -> None:
        """`node.in_upper` or `node.lower` was just changed (copy-up, a
        directory move, the layers re-read)."""
        for watcher in self._watchers:
            watcher(node)

    def _link(self, node: Node, link: tuple[int, bytes]) -> None:
        """Record the (parent, name) `node` was reached by: a directory has
        one name, a file its latest first."""
        if link not in node.links:
            if node.is_dir:
                node.links[:] = [link]
                self._paths_changed()
            else:
                node.links.insert(0, link)

    def nameless(self, ino: int, st: StatLike) -> Node:
        """A regular file that has no name yet (O_TMPFILE), looked up once
        by the reply that hands it to the kernel."""
        node = Node(ino, False, None, True, orphan_st=st)
        self._nodes[ino] = node
        node.lookups = 1
        return node

    def add_created(self, ino: int, parent: int, name: bytes, generation: int) -> Node:
        """A regular file just made in the upper layer by another (the FUSE
        shim's CREATE, fuse/create_table.py) under the generation it gave:
        `intern` with `made` and one lookup, as the daemon's own CREATE."""
        old = self._nodes.get(ino)
        if old is not None and old.is_dir:
            self._dir_gone(ino)
        node = self._nodes[ino] = Node(ino, False, None, True, [(parent, name)],
                                       1 if old is None else old.lookups + 1,
                                       generation=generation)
        return node

    def add_lookup(self, node: Node, count: int = 1) -> None:
        node.lookups += count

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.lookups = max(0, node.lookups - count)
        self._maybe_drop(node)

    def add_handle(self, node: Node, fd: int) -> None:
        node.fds.append(fd)

    def release_handle(self, node: Node, fd: int) -> None:
        with contextlib.suppress(ValueError):
            node.fds.remove(fd)
        self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        if node.lookups == 0 and not node.fds and self._nodes.get(node.ino) is node:
            del self._nodes[node.ino]
            if node.is_dir:
                self._dir_gone(node.ino)

    def _paths_changed(self) -> None:
        self._dir_paths.clear()
        if self.paths_watch is not None:
            self.paths_watch()

    def _dir_gone(self, ino: int) -> None:
        """Directory `ino`'s node left the table: its cached path goes, and
        the shim's and the fd tables' entries (`drop_watch`)."""
        self._dir_paths.pop(ino, None)
        if self.drop_watch is not None:
            self.drop_watch(ino)

    def unlink(self, node: Node, parent: int, name: bytes, st: StatLike | None = None) -> None:
        """Remove one name of `node` (after unlink, rmdir or rename-over);
        `st` is what it was, kept if that was its last name."""
        with contextlib.suppress(ValueError):
            node.links.remove((parent, name))
        if not node.links:
            node.orphan_st = st
            self.state_changed(node)  # (what answers for it without the daemon stops)
        if node.is_dir:
            self._paths_changed()

    def move(self, node: Node, old: tuple[int, bytes], new: tuple[int, bytes]) -> None:
        """Rename one link of `node`."""
        with contextlib.suppress(ValueError):
            node.links.remove(old)
        if node.is_dir:
            node.links[:] = [new]
            self._paths_changed()
        else:
            node.links.insert(0, new)

    def path_of(self, node: Node) -> bytes:
        """The overlay path of `node` (relative, b"" for the root).

        Raises FileNotFoundError for a node that has no name any more.
        """
        if node.ino == ROOT_INO:
            return b""
        step = next(((self._nodes[p], n) for p, n in node.links if p in self._nodes), None)
        if step is None:
            raise FileNotFoundError(2, "unlinked")
        parent, name = step
        parent_path = self._dir_path(parent)
        return parent_path + b"/" + name if parent_path else name

    def _dir_path(self, node: Node, depth: int = 0) -> bytes:
        if node.ino == ROOT_INO:
            return b""
        cached = self._dir_paths.get(node.ino)
        if cached is not None:
            return cached
        if depth > 4096:
            raise OSError(40, "link loop in inode table")
        step = next(((self._nodes[p], n) for p, n in node.links if p in self._nodes), None)
        if step is None:
            raise FileNotFoundError(2, "unlinked")
        parent, name = step
        parent_path = self._dir_path(parent, depth + 1)
        path = parent_path + b"/" + name if parent_path else name
        self._dir_paths[node.ino] = path
        return path
