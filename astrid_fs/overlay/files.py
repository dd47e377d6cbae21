"""The one owner of every file descriptor the daemon holds on layer files.

Three kinds, each with its own end of life:

- **Inode fds** serve I/O that arrives without an OPEN (the kernel's
  no_open mode, see fuse/native/fuse_shim.c): READ, WRITE, FSYNC and the
  shim's LSEEK / FALLOCATE name an inode. One fd per inode, opened on first
  use: read-only on the layer that shows the file until the first write,
  then read-write on the upper copy (never a lower file for writing).
  Closed least-recently-used beyond `capacity`, when the kernel forgets the
  inode, or when the layers change behind the mount (`layers_changed`).
- **Pinned fds** are inode fds of files that lost their last name while the
  kernel may still hold them open: only the fd reaches the data. They do not
  count against `capacity`, are never evicted, and close when the kernel
  forgets the inode.
- **Handles** answer OPEN and CREATE where the kernel keeps a handle (no
  shim, or remote readers): an fd or a remote `Reader`, closed at RELEASE.

Invariants: an fd is in exactly one of these maps; every close goes
through this module; a lookup never returns an fd this module has closed.
A `WriteTable` (the FUSE shim's fd table, fuse/write_table.py), when given,
names exactly the inode fds (all of them, if it `serves_reads`; else only
the writable ones on upper files and pinned ones), each marked with whether
WRITEs may go there: READs and WRITEs of those inodes are served from it
without this module, so an entry is taken out of it before its fd closes or
is replaced, and an entry on a lower file before that file is copied up
(the inode table tells us, `InodeTable.watch`): a reader then reads the
upper copy, as it would here.
The daemon's fd count is bounded by `capacity` + pinned files + handles the
kernel holds open.

Threading: called from the trio thread only (remote readers are used from
worker threads, but opened and closed here).
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from astrid_fs.overlay.inodes import ROOT_INO, Node
from astrid_fs.overlay.layers import Reader
from astrid_fs.overlay.overlay import Overlay

# Handle numbers for remote readers sit above any fd (fds are < 2**31).
_FIRST_READER_FH = 1 << 40
# Large enough that an agent's session revisiting the last few thousand
# files it wrote never reopens them: a WRITE to a file whose fd was closed
# goes to Python to reopen it (~60 µs here against a C answer's ~30), and
# copying up 3,000 files then appending to the first 1,000 again reopened
# all 1,000 with 1,024 (docs/benchmarks.md, "The inode fd bound").
# `fd_capacity` keeps it comfortably below the daemon's RLIMIT_NOFILE.
DEFAULT_CAPACITY = 4096
# The least it goes to, whatever the limit (a build's files open at once).
MIN_CAPACITY = 256


def fd_capacity(hard_limit: int) -> int:
    """Inode fds to keep for a daemon whose RLIMIT_NOFILE is raised to
    `hard_limit` (at mount): at most a quarter of it, leaving the rest to
    pinned files, handles the kernel holds open, and the FUSE shim's own
    (part 12's lower files, read-ahead, rings); DEFAULT_CAPACITY at most,
    MIN_CAPACITY at least."""
    if hard_limit < 0:  # RLIM_INFINITY
        return DEFAULT_CAPACITY
    return max(MIN_CAPACITY, min(DEFAULT_CAPACITY, hard_limit // 4))


class WriteTable(Protocol):
    """Where by-inode READs (and WRITEs, where `writes`) may go without this
    module (fuse/write_table.py)."""

    #: Whether read-only fds are worth adding (READs served from them).
    serves_reads: bool

    def add(self, ino: int, fd: int, *, writes: bool) -> None: ...

    def remove(self, ino: int) -> None: ...


@dataclass
class InodeFd:
    fd: int
    writable: bool
    in_upper: bool
    pinned: bool = False


class OpenFiles:
    """Inode fds, pinned fds and open handles of one mounted overlay."""

    def __init__(self, overlay: Overlay, capacity: int = DEFAULT_CAPACITY,
                 write_table: WriteTable | None = None) -> None:
        self.ov = overlay
        self.capacity = capacity
        self.write_table = write_table
        self._by_ino: OrderedDict[int, InodeFd] = OrderedDict()
        self._pinned = 0
        self._handles: dict[int, Node] = {}
        self._readers: dict[int, tuple[Node, Reader]] = {}
        self._ino_readers: dict[int, Reader] = {}
        self._next_reader_fh = _FIRST_READER_FH
        overlay.table.watch(self._layer_changed)

    # ---- inode fds ----------------------------------------------------------

    def peek(self, ino: int) -> InodeFd | None:
        """The inode's fd entry, if one is open (no reopen, no LRU touch)."""
        return self._by_ino.get(ino)

    def inode_fd(self, node: Node, *, write: bool) -> int:
        """An fd for no-open I/O on `node`, (re)opened as the layers require.

        A write to a file still in the lower layer copies it up first; a
        write to a file with no name left (unlinked while open) goes to an
        unnamed copy, as on a plain filesystem."""
        entry = self._by_ino.get(node.ino)
        if entry is not None:
            self._by_ino.move_to_end(node.ino)
            # A pinned fd is the file itself, whatever the layers say now.
            if (entry.pinned or entry.in_upper == node.in_upper) \
                    and (entry.writable or not write):
                return entry.fd
        if entry is not None and entry.pinned:
            if entry.in_upper:
                # An upper file unlinked while open: only the fd reaches it.
                fd = os.open(f"/proc/self/fd/{entry.fd}", os.O_RDWR)
            else:
                fd = self.ov.anonymous_copy(node, entry.fd)
            return self._put(node.ino, InodeFd(fd, True, True, pinned=True))
        if not node.links and node.ino != ROOT_INO and write:
            # Whited out while open: writes go to an unnamed copy (a lower
            # file removed from the view still reads from the lower layer).
            fd = self.ov.anonymous_copy(node, None)
            return self._put(node.ino, InodeFd(fd, True, True, pinned=True))
        if write:
            fd = self.ov.copy_up_open(node)
        else:
            fd = os.open(self.ov.real_path(node), os.O_RDONLY | os.O_NOFOLLOW)
        return self._put(node.ino, InodeFd(fd, write, node.in_upper))

    def adopt(self, node: Node, fd: int, *, registered: bool = False) -> None:
        """Keep `fd` (read-write, on the upper file) as the inode fd of a
        file just created: no-open CREATE hands the kernel no handle.
        `registered`: the write table has it already (the shim made the
        file, fuse/create_table.py), and must not take it out and back."""
        self._put(node.ino, InodeFd(fd, True, True), registered=registered)

    def keep_reachable(self, node: Node, st: os.stat_result | object) -> None:
        """Before `node` may lose its last name: pin an fd on its upper file
        so the data stays readable and writable through open descriptors."""
        mode = getattr(st, "st_mode", 0)
        if not stat.S_ISREG(mode) or node.lookups == 0 or not node.in_upper:
            return
        entry = self._by_ino.get(node.ino)
        if entry is None or not entry.in_upper:
            # Pin an fd on the upper file itself, never a stale lower one.
            self._close(node.ino)
            fd = os.open(self.ov.real_path(node), os.O_RDWR | os.O_NOFOLLOW)
            entry = InodeFd(fd, True, True)
            self._put(node.ino, entry)
        if not entry.pinned:
            entry.pinned = True
            self._pinned += 1

    def pread(self, node: Node, size: int, offset: int) -> bytes:
        return os.pread(self.inode_fd(node, write=False), size, offset)

    def pwrite(self, node: Node, data: bytes, offset: int) -> int:
        return os.pwrite(self.inode_fd(node, write=True), data, offset)

    def fsync_inode(self, ino: int, datasync: bool) -> None:
        """fsync what was written through the inode's fd (nothing if none)."""
        entry = self._by_ino.get(ino)
        if entry is not None and entry.writable:
            (os.fdatasync if datasync else os.fsync)(entry.fd)

    def fstat(self, ino: int) -> os.stat_result | None:
        """fstat of the inode's open fd, if it has one (unlinked-but-open)."""
        entry = self._by_ino.get(ino)
        return None if entry is None else os.fstat(entry.fd)

    def _put(self, ino: int, entry: InodeFd, *, registered: bool = False) -> int:
        old = self._by_ino.pop(ino, None)
        if old is not None:
            if self.write_table is not None:
                self.write_table.remove(ino)
            if old.pinned:
                self._pinned -= 1
            if old.fd != entry.fd:
                os.close(old.fd)
        if entry.pinned:
            self._pinned += 1
        self._by_ino[ino] = entry
        writes = entry.writable and (entry.in_upper or entry.pinned)
        if self.write_table is not None and (writes or self.write_table.serves_reads) \
                and not (registered and old is None):
            self.write_table.add(ino, entry.fd, writes=writes)
        self._evict(keep=ino)
        return entry.fd

    def _layer_changed(self, node: Node) -> None:
        # Copied up: an fd on the lower file no longer shows the file: close
        # it (and take it out of the shim's table) now, not at the next read
        # here, since the shim reads without asking.
        entry = self._by_ino.get(node.ino)
        if entry is not None and node.in_upper and not entry.in_upper and not entry.pinned:
            self._close(node.ino)

    def _evict(self, keep: int) -> None:
        excess = len(self._by_ino) - self._pinned - self.capacity
        if excess <= 0:
            return
        # Oldest first, stopping at the first victims found: copying the
        # whole table each time cost a cold `grep -r` ~10 % of the daemon.
        victims: list[int] = []
        for ino, entry in self._by_ino.items():
            if len(victims) >= excess:
                break
            if ino != keep and not entry.pinned:
                victims.append(ino)
        for ino in victims:
            self._close(ino)

    def _close(self, ino: int) -> None:
        entry = self._by_ino.pop(ino, None)
        if entry is not None:
            if self.write_table is not None:
                self.write_table.remove(ino)
            if entry.pinned:
                self._pinned -= 1
            os.close(entry.fd)

    # ---- handles ------------------------------------------------------------

    def add_handle(self, node: Node, fd: int) -> int:
        """Track an fd the kernel got as a file handle (closed at release)."""
        self._handles[fd] = node
        self.ov.table.add_handle(node, fd)
        return fd

    def handle_node(self, fh: int) -> Node | None:
        return self._handles.get(fh)

    def add_reader(self, node: Node, reader: Reader) -> int:
        fh = self._next_reader_fh
        self._next_reader_fh += 1
        self._readers[fh] = (node, reader)
        return fh

    def reader(self, fh: int) -> Reader | None:
        hit = self._readers.get(fh)
        return None if hit is None else hit[1]

    def inode_reader(self, node: Node) -> Reader | None:
        return self._ino_readers.get(node.ino)

    def set_inode_reader(self, node: Node, reader: Reader) -> None:
        self._ino_readers[node.ino] = reader

    def release(self, fh: int) -> Reader | None:
        """Close a handle; a remote reader is returned for the caller to
        close in a worker thread."""
        hit = self._readers.pop(fh, None)
        if hit is not None:
            return hit[1]
        node = self._handles.pop(fh, None)
        os.close(fh)
        if node is not None:
            self.ov.table.release_handle(node, fh)
        return None

    # ---- end of life --------------------------------------------------------

    def forget(self, ino: int) -> Reader | None:
        """The kernel forgot `ino`: close its inode fd (pinned or not); its
        remote reader is returned for the caller to close in a thread."""
        self._close(ino)
        return self._ino_readers.pop(ino, None)

    def layers_changed(self) -> None:
        """The layers changed behind the mount (commit, discard, rollback):
        close every unpinned inode fd, so the next I/O reopens whatever
        shows the file now. Handles and pinned fds stay: they are open
        files, and open files keep working."""
        for ino in [i for i, e in self._by_ino.items() if not e.pinned]:
            self._close(ino)

    def counts(self) -> dict[str, int]:
        """Open fds by kind (the control socket's `stats`)."""
        return {"inode_fds": len(self._by_ino) - self._pinned, "pinned": self._pinned,
                "handles": len(self._handles), "readers": len(self._readers) +
                len(self._ino_readers)}
