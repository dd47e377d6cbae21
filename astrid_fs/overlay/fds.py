"""File descriptors kept per inode, for I/O that arrives without an open.

With the kernel's "no_open" mode (see native/fuse_shim.c) READ, WRITE and
FSYNC name an inode, not a handle from OPEN. The daemon keeps one fd per
inode here: read-only on the lower file until the first write, then
read-write on the upper copy. Bounded (least recently used fds close first)
except for pinned inodes — files unlinked while the kernel may still hold
them open, whose data is reachable only through the fd. An inode's fd closes
when the kernel forgets the inode.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class InodeFd:
    fd: int
    writable: bool
    in_upper: bool
    pinned: bool = False


class InodeFds:
    """LRU map inode → InodeFd."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._fds: OrderedDict[int, InodeFd] = OrderedDict()

    def get(self, ino: int) -> InodeFd | None:
        entry = self._fds.get(ino)
        if entry is not None:
            self._fds.move_to_end(ino)
        return entry

    def put(self, ino: int, entry: InodeFd) -> None:
        old = self._fds.pop(ino, None)
        if old is not None and old.fd != entry.fd:
            os.close(old.fd)
        self._fds[ino] = entry
        self._evict()

    def pin(self, ino: int) -> None:
        entry = self._fds.get(ino)
        if entry is not None:
            entry.pinned = True

    def close(self, ino: int) -> None:
        entry = self._fds.pop(ino, None)
        if entry is not None:
            os.close(entry.fd)

    def clear(self) -> None:
        """Close every unpinned fd (after the layers changed behind us)."""
        for ino in [i for i, e in self._fds.items() if not e.pinned]:
            self.close(ino)

    def __len__(self) -> int:
        return len(self._fds)

    def _evict(self) -> None:
        if len(self._fds) <= self.capacity:
            return
        for ino in list(self._fds):
            if len(self._fds) <= self.capacity:
                break
            if not self._fds[ino].pinned:
                self.close(ino)
