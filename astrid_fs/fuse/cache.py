"""What the kernel may cache, and for how long: the adapter's one place for
entry/attribute timeouts, page-cache keeping and directory listings.

- Entries and attributes backed by the upper layer: UPPER_TTL (only the
  kernel's own requests change them while mounted; commit, discard and
  rollback invalidate explicitly through the control socket).
- Entries backed by the lower layer, merged directories, negative lookups:
  `lower_ttl` (the user may edit the project under a running session).
- Page cache: kept across opens (`keep_cache`) while the file's mtime and
  size are what they were at the last open, or changed only through us.
  Not filled at all by a file CREATE makes write-only (`direct_for_create`):
  its writer's pages go to the daemon as they are (FOPEN_DIRECT_IO).
- Directory listings: the kernel caches them (FOPEN_CACHE_DIR through the
  shim) and keeps them while neither layer's directory changed. It checks
  for a change only when a reader starts at offset 0, and any reader fills
  the cache, so a change made through the mount also drops the kernel's
  cached listing before it is answered (`entries_changed`): else a walk
  begun before the change finished the cache with names after it, and a
  reader who started after the change was served that mix past its first
  chunk (a name twice, another missing). The daemon keeps each listed
  directory's names at stable places (`Listing`), the READDIR offsets, so
  that readers part way through go on where they were.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator

from astrid_fs.overlay.inodes import ROOT_INO, Node
from astrid_fs.overlay.layers import StatLike

# s3ql uses an hour for the same reason: nothing but the kernel's own
# requests change upper entries while mounted.
UPPER_TTL = 3600.0
# Directories whose listing (its places) is kept for no-opendir readdir, and
# the names all kept listings hold at most (~300 bytes each: a few dozen MB).
_LISTINGS = 256
LISTED_NAMES = 200_000
# A listing's emptied places are dropped from its order once more than this
# and than its names.
_DEAD_MAX = 64


class Listing:
    """A directory's names at stable places, for no-opendir readdir, where
    the kernel names no reader: READDIR at offset p is "from place p on" for
    every reader. A name keeps its place while it stays; a name added gets a
    new place after all others; no place is ever given again. So a reader
    part way through goes on where it was whoever listed or changed the
    directory meanwhile: each name there at its opendir and still there
    comes exactly once.
    An entry's offset is the place of the next name still there when it is
    sent (`next_offset`): a reader who removes each name as it lists it
    (`for e in scandir(d): unlink(e)`) then resumes at a name the kernel's
    cached listing holds even when another reader refilled that cache after
    the removals (the kernel finds a position in its cache only as the
    offset of the entry before, and when it does not find it in a cache
    whose size is a whole number of pages it answers end of directory).
    A fresh listing has "." and ".." at places 0 and 1, then the lower
    directory's names sorted, then the upper's own (layers.py
    `placed_names`): a lower-only directory's names are where the shim's own
    listing of it put them (native/fuse_shim.c part 12, offset index + 1),
    and keep those places once the directory has an upper directory, so a
    reader the shim began serving goes on where it was after a change."""

    __slots__ = ("dead", "name_only", "names", "next_place", "order", "places")

    def __init__(self, names: list[bytes | None],
                 name_only: dict[bytes, tuple[int, int]]) -> None:
        # place -> name, the names there now (None in `names`: an empty place)
        self.names = {i: name for i, name in enumerate(names) if name is not None}
        self.places = {name: i for i, name in self.names.items()}
        self.order = list(range(len(names)))  # places, ascending (some emptied)
        self.next_place = len(names)
        self.dead = len(names) - len(self.names)  # emptied places still in `order`
        # names sent without attributes, with their inode and type (name_only.py)
        self.name_only = name_only

    def entries(self, start: int) -> Iterator[tuple[int, bytes]]:
        """(place, name) of the names there, from place `start` on."""
        order, names = self.order, self.names
        for i in range(bisect.bisect_left(order, start), len(order)):
            name = names.get(order[i])
            if name is not None:
                yield order[i], name

    def next_offset(self, place: int) -> int:
        """The offset sent with the entry at `place`."""
        order, names = self.order, self.names
        for i in range(bisect.bisect_right(order, place), len(order)):
            if order[i] in names:
                return order[i]
        return self.next_place

    def remove(self, name: bytes) -> None:
        place = self.places.pop(name, None)
        if place is None:
            return
        del self.names[place]
        self.dead += 1
        if self.dead > max(_DEAD_MAX, len(self.places)):
            self.order = [p for p in self.order if p in self.names]  # (places kept)
            self.dead = 0

    def add(self, name: bytes) -> None:
        if name not in self.places:
            place = self.next_place
            self.next_place += 1
            self.places[name] = place
            self.names[place] = name
            self.order.append(place)

    def update(self, fresh: list[bytes | None]) -> None:
        """Make it list `fresh`: names gone removed, new ones added."""
        names = [n for n in fresh if n is not None]
        keep = set(names)
        for gone in [n for n in self.places if n not in keep]:
            self.remove(gone)
        for name in names:
            self.add(name)


#: Environment variable: 0 keeps the page cache for files created
#: write-only too (`direct_for_create`; for A/B benchmarks).
CREATE_DIRECT_ENV = "ASTRID_FS_CREATE_DIRECT_IO"


class KernelCache:
    """Per-mount cache decisions; holds no fds and makes no syscalls."""

    def __init__(self, lower_ttl: float) -> None:
        self.lower_ttl = lower_ttl
        self._last_sig: dict[int, tuple[int, int]] = {}
        self._kernel_wrote: set[int] = set()
        self._dir_sig: dict[int, tuple[int, int]] = {}
        self._merged_lower_mtime: dict[int, int] = {}
        self._listings: OrderedDict[int, Listing] = OrderedDict()
        self.create_direct = os.environ.get(CREATE_DIRECT_ENV, "").strip() != "0"
        # Directories the kernel holds no cached listing of: dropped since,
        # or made here, and not listed by the daemon since.
        self._unlisted: set[int] = set()
        # Told of each change of `_unlisted` (ino, now unlisted; ino 0: all
        # left it): the shim's CREATEs (create_table.py).
        self.unlisted_watch: Callable[[int, bool], None] | None = None

    def ttl(self, node: Node, merged: bool) -> float:
        """Entry and attribute timeout for `node`."""
        # A merged directory also shows the lower layer: the lower TTL, so
        # that project edits there are noticed (see `lower_dir_moved`).
        return UPPER_TTL if node.in_upper and not merged else self.lower_ttl

    @staticmethod
    def nlink(node: Node, st: StatLike, merged: bool) -> int:
        if not node.links and node.ino != ROOT_INO:
            return 0  # removed, still open
        return 1 if merged else st.st_nlink

    def wrote(self, ino: int) -> None:
        """The kernel changed this file's data through us."""
        self._kernel_wrote.add(ino)

    def keep_pages(self, ino: int, st: StatLike) -> bool:
        """Whether an open of `ino` may keep the kernel's cached pages."""
        sig = (st.st_mtime_ns, st.st_size)
        keep = self._last_sig.get(ino) == sig or ino in self._kernel_wrote
        self._last_sig[ino] = sig
        self._kernel_wrote.discard(ino)
        return keep

    def direct_for_create(self, flags: int) -> bool:
        """Whether the file a CREATE with open `flags` makes bypasses the
        kernel's page cache for that open (FOPEN_DIRECT_IO): when it is
        write-only. Without writeback caching every write(2) is sent as a
        WRITE either way, and the pages a cached write fills are dropped by
        the next read (the mtime moved), so for a writer that cannot read
        them they were one page allocation and one copy per page for nothing
        (docs/benchmarks.md, "Files created write-only skip the page cache":
        a 1 GiB write 0.66-1.0 s cached, 0.32-0.49 s direct, native 0.18).
        Other opens of the file keep the page cache; a write through this
        one makes their next read refetch, as a cached write does."""
        return self.create_direct and flags & os.O_ACCMODE == os.O_WRONLY

    def keep_listing(self, ino: int, sig: tuple[int, int]) -> bool:
        """Whether an opendir may keep the kernel's cached listing."""
        keep = self._dir_sig.get(ino) == sig
        self._dir_sig[ino] = sig
        return keep

    def lower_dir_moved(self, ino: int, lower_mtime_ns: int) -> bool:
        """The kernel validates a cached listing against the directory's
        mtime, which for a merged directory is the upper one's: True when
        the lower directory's mtime moved since last seen (project edited),
        so the caller drops the kernel's caches of it."""
        seen = self._merged_lower_mtime.get(ino)
        self._merged_lower_mtime[ino] = lower_mtime_ns
        # (the kept listing stays: the next rewind updates it from the layers)
        return seen is not None and seen != lower_mtime_ns

    def listed(self, ino: int) -> None:
        """The daemon sent entries of directory `ino`: the kernel may cache them."""
        if ino in self._unlisted:
            self._unlisted.discard(ino)
            if self.unlisted_watch is not None:
                self.unlisted_watch(ino, False)

    def unlisted_dirs(self) -> list[int]:
        return list(self._unlisted)

    def unlisted(self, ino: int) -> None:
        """Directory `ino` was just made: the kernel has no listing of it."""
        self._unlisted.add(ino)
        if self.unlisted_watch is not None:
            self.unlisted_watch(ino, True)

    def created(self, ino: int, mtime_ns: int) -> None:
        """File `ino` was just made empty (by the shim): what `keep_pages`
        records of the daemon's own CREATE."""
        self._last_sig[ino] = (mtime_ns, 0)
        self._kernel_wrote.discard(ino)

    def entries_changed(self, ino: int, added: bytes | None = None,
                        removed: bytes | None = None) -> bool:
        """Name `added` or `removed` (or one replaced: neither) in directory
        `ino` through the mount. The kept listing follows (`Listing`); True
        when the kernel may hold a cached listing of it, which the caller
        drops (invalidates its pages) before the change is answered."""
        kept = self._listings.get(ino)
        if kept is not None:
            kept.name_only = {}  # (a name's type or inode may be another now)
            if removed is not None:
                kept.remove(removed)
            if added is not None:
                kept.add(added)
        if ino in self._unlisted:
            return False
        self.unlisted(ino)
        return True

    def listing(self, ino: int) -> Listing | None:
        return self._listings.get(ino)

    def put_listing(self, ino: int, names: list[bytes | None],
                    name_only: dict[bytes, tuple[int, int]]) -> Listing:
        """The listing of `ino` as just taken (a rewind's, or one for a
        reader whose listing was not kept): the kept one updated, its places
        unchanged. Bounded (`_LISTINGS` directories, `LISTED_NAMES` names):
        the least recently listed directories' go first (a reader part way
        through one then goes on by index in a fresh one)."""
        kept = self._listings.get(ino)
        if kept is None:
            kept = self._listings[ino] = Listing(names, name_only)
        else:
            kept.update(names)
            kept.name_only = name_only
        self._listings.move_to_end(ino)
        held = sum(len(listing.names) for listing in self._listings.values())
        while len(self._listings) > 1 and (len(self._listings) > _LISTINGS
                                           or held > LISTED_NAMES):
            held -= len(self._listings.popitem(last=False)[1].names)
        return kept

    def forget(self, ino: int) -> None:
        self._listings.pop(ino, None)
        self._merged_lower_mtime.pop(ino, None)
        self._last_sig.pop(ino, None)
        self._dir_sig.pop(ino, None)
        self._kernel_wrote.discard(ino)
        self.listed(ino)  # (forgotten: out of the shim's set too)

    def clear(self) -> None:
        """The layers changed behind the mount: trust nothing cached."""
        self._last_sig.clear()
        self._dir_sig.clear()
        self._listings.clear()
        self._unlisted.clear()
        if self.unlisted_watch is not None:
            self.unlisted_watch(0, False)
