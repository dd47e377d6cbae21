"""When a READDIRPLUS entry goes to the kernel by name only.

A name-only entry (shim part 11: nodeid 0) gives the kernel the name, d_ino
and d_type and no attributes: the daemon needs no lstat and keeps no inode
for it, which is what a cold `find -name` or git's untracked-file scan
wants. A reader that then stats or opens the entry sends one LOOKUP for it,
a round trip the full entry would have saved (`find -printf`, `grep -r`,
`ls -l`). What it knows: readers walk many directories the same way, so
the lookups that follow the last name-only listings decide the next ones.
What it does not: which reader sent a request. Pure bookkeeping: no FUSE,
no syscalls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container, Iterable


class NameOnlyListings:
    """The per-mount choice between name-only and full listings.

    - A listing goes name-only unless the reader was lately seen to look up
      what it had been listed by name: then the next `FULL_AFTER_LOOKUPS`
      listings are full, and the one after probes with names again.
    - A directory with more than `MAX_ENTRIES` candidates is listed in full:
      a wrong guess costs at most that many lookups.
    - Where the FUSE shim lists lower-only directories itself, its listings
      and the daemon's count down one count (`full_take`): the shim's own
      would otherwise be followed by as many full listings in Python before
      the next probe.
    """

    MAX_ENTRIES = 256
    # A stat-like walk of the bench tree (421 directories) pays one probe
    # (~50 LOOKUPs) per this many listings; a wrong 'full' costs only what
    # every listing cost before name-only entries.
    FULL_AFTER_LOOKUPS = 128
    _WATCHED = 8  # the last name-only listings whose lookups are counted

    def __init__(self) -> None:
        self._full_left = 0
        # Told when full listings are asked for (the FUSE shim lists lower-only
        # directories itself then: fuse/lookup_table.py).
        self.full_hook: Callable[[int], None] | None = None
        # Where the shim lists, its count is the one count: this takes one full
        # listing from it (1) or says none is left (0). Else `_full_left` counts.
        self.full_take: Callable[[], int] | None = None
        self._watched: OrderedDict[int, tuple[Container[bytes], list[int]]] = OrderedDict()

    def listing(self, dir_ino: int, names: Container[bytes], candidates: int) -> bool:
        """Whether a listing of `dir_ino` taken now may send `names` (of which
        there are `candidates`) by name only."""
        if candidates == 0 or candidates > self.MAX_ENTRIES:
            return False
        if self.full_take is not None:
            if self.full_take():
                return False
        elif self._full_left > 0:
            self._full_left -= 1
            return False
        self._watched[dir_ino] = (names, [candidates, 0])
        self._watched.move_to_end(dir_ino)
        while len(self._watched) > self._WATCHED:
            self._watched.popitem(last=False)
        return True

    def looked_up(self, dir_ino: int, name: bytes) -> None:
        """The kernel asked for `name` in `dir_ino`: a reader that wants more
        than names, if a name-only listing had sent it (a quarter of them
        asked for: give attributes for the next listings)."""
        watched = self._watched.get(dir_ino)
        if watched is None or name not in watched[0]:
            return
        counts = watched[1]
        counts[1] += 1
        if counts[1] >= 2 and counts[1] * 4 >= counts[0]:
            self._full_left = self.FULL_AFTER_LOOKUPS
            self._watched.clear()
            if self.full_hook is not None:
                self.full_hook(self.FULL_AFTER_LOOKUPS)

    def looked_up_many(self, found: Iterable[tuple[int, int, bool, bytes]]) -> None:
        """`looked_up` for each (directory inode, _, _, name) of `found`."""
        if not self._watched:
            return
        for dir_ino, _ino, _is_dir, name in found:
            if dir_ino in self._watched:
                self.looked_up(dir_ino, name)

    def forget(self, dir_ino: int) -> None:
        self._watched.pop(dir_ino, None)
