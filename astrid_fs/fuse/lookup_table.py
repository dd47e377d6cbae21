"""The shim's LOOKUP table (native/fuse_shim.c, part 12): LOOKUPs answered in C.

In a directory only the local lower layer shows (overlay/core.py
`lower_only`), a child is what one lstat of its lower entry says, and its
inode number is derived from that lstat (overlay/inodes.py). The shim can
do that itself: this module names those directories to it (inode -> lower
path) and the devices tagged so far, and the shim answers LOOKUPs in them
inside pyfuse3's receive call: no Python, no trio turn, no pyfuse3 request.
A cold `git status` (one LOOKUP per tracked file) or a `stat` walk lives on
this path.

The daemon must still count every lookup the kernel holds (FORGET comes to
Python), so the shim queues each entry it sent and calls `absorb` before it
hands any request to pyfuse3: Python then interns the nodes and counts the
lookups in one batch, as its own lookup would have. So whenever Python runs
a request, its inode table is whole. Python's own tasks that are not FUSE
requests (the control socket) call `absorb` first themselves.

A regular file the shim found is also read by the shim: its first READ
(the daemon's fd table, part 9, has no fd for it yet) opens the lower file
in C, keeps that fd in part 9's table marked as the shim's own (at most 256;
the daemon's own fd for the inode replaces it), and answers. So a cold
`grep -r` over a lower-only tree reads without Python. A copy-up takes the
file back (`node_changed`, below), as does the kernel's FORGET.

What the shim must not answer stays with Python: a directory stops being
named here the moment it gets an upper directory (copy-up: whiteouts,
new entries), loses its lower directory (a directory move), or is dropped;
after commit, discard or rollback every directory is named again from its
re-read state. A hard-linked regular file, a device the daemon has not
tagged yet, an errno other than ENOENT go to Python (the shim declines).

With passthrough (shim version 11 on) a regular file the shim sends also
primes the passthrough table, as the daemon's own lookup does (passthrough.py
`prime`), so its read-only OPENs are answered in C as well; an older shim
leaves lookups to Python under passthrough. Off with
remote trees or stacked lowers (no directory is `lower_only` there), without
a shim that has part 12, or with `ASTRID_FS_C_LOOKUP=0` (for benchmarks).

Threading: the shim calls `absorb` on pyfuse3's trio thread, synchronously,
in the middle of the FUSE loop: it never awaits and never raises.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
from typing import Any

from astrid_fs.fuse.cache import UPPER_TTL
from astrid_fs.fuse.create_table import ShimCreates
from astrid_fs.fuse.name_only import NameOnlyListings
from astrid_fs.overlay.core import OverlayCore
from astrid_fs.overlay.inodes import ROOT_INO, Node
from astrid_fs.overlay.layers import StatLike

log = logging.getLogger("astrid_fs.fuse.lookup_table")

ENV = "ASTRID_FS_C_LOOKUP"
ABSORB_CB = ctypes.CFUNCTYPE(None)
# One queued entry: parent inode, inode, type (0 file, 1 directory, 2 other),
# name length; then the name.
_RECORD = struct.Struct("<QQBB")
_DIR = 1
# One listed file: inode, path length; then the lower path.
_FILE = struct.Struct("<QH")


class ShimLookups:
    """The Python side of the shim's LOOKUP table."""

    def __init__(self, lib: Any, overlay: OverlayCore, policy: NameOnlyListings,
                 lower_ttl: float) -> None:
        self._lib = lib
        self.ov = overlay
        self.policy = policy
        self.absorbed = 0
        self.absorbs = 0  # calls: each a request for Python (or a doorbell) after C's answers
        # Set by the daemon: files the shim made (create_table.py), taken in
        # with every absorb.
        self.creates: ShimCreates | None = None
        # `absorb`'s buffer, reused (`_buffer`)
        self._buf: ctypes.Array[ctypes.c_char] | None = None
        lib.astrid_lk_enable.argtypes = [ctypes.c_char_p, ctypes.c_double, ABSORB_CB]
        lib.astrid_lk_enable.restype = ctypes.c_int
        lib.astrid_lk_dev.argtypes = [ctypes.c_uint64, ctypes.c_uint64]
        lib.astrid_lk_dev.restype = ctypes.c_int
        lib.astrid_lk_dir.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_char_p,
                                       ctypes.c_size_t]
        lib.astrid_lk_dir.restype = ctypes.c_int
        lib.astrid_lk_pending.argtypes = []
        lib.astrid_lk_pending.restype = ctypes.c_size_t
        lib.astrid_lk_take.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.astrid_lk_take.restype = ctypes.c_size_t
        lib.astrid_lk_files.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.astrid_lk_files.restype = None
        lib.astrid_lk_file_drop.argtypes = [ctypes.c_uint64]
        lib.astrid_lk_file_drop.restype = None
        lib.astrid_lk_full.argtypes = [ctypes.c_int64]
        lib.astrid_lk_full.restype = None
        lib.astrid_lk_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
        lib.astrid_lk_stats.restype = None
        # Part 19 (shim versions 30-31): GETATTRs and misses of upper directories in C.
        self._updirs = hasattr(lib, "astrid_lk_updir")
        if self._updirs:
            lib.astrid_lk_updir_enable.argtypes = [ctypes.c_char_p, ctypes.c_double]
            lib.astrid_lk_updir_enable.restype = ctypes.c_int
            lib.astrid_lk_updir.argtypes = [
                ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64,
                ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_int]
            lib.astrid_lk_updir.restype = ctypes.c_int
            lib.astrid_lk_updir_clear.argtypes = []
            lib.astrid_lk_updir_clear.restype = None
            upper = os.path.abspath(overlay.layers.upper)
            self._updirs = lib.astrid_lk_updir_enable(upper, UPPER_TTL) == 0
        self._callback = ABSORB_CB(self._absorb_from_shim)  # kept: the shim holds it
        tags = overlay.tags
        for dev, tag in tags.items():
            lib.astrid_lk_dev(dev, tag)
        tags.on_new = self._tagged
        table = overlay.table
        table.watch(self.node_changed)
        table.drop_watch = self.dropped
        if self._updirs:
            table.paths_watch = lib.astrid_lk_updir_clear
        policy.full_hook = lib.astrid_lk_full
        if hasattr(lib, "astrid_lk_full_take"):  # (shim version 22)
            lib.astrid_lk_full_take.argtypes = []
            lib.astrid_lk_full_take.restype = ctypes.c_int
            policy.full_take = lib.astrid_lk_full_take
        for node in table.nodes():
            self.node_changed(node)
        # (a path, not an fd: a lower root replaced meanwhile is followed, as
        # the daemon's own paths follow it)
        root = os.path.abspath(overlay.layers.lower)
        if lib.astrid_lk_enable(root, lower_ttl, self._callback) != 0:
            raise OSError("astrid_lk_enable refused")

    @classmethod
    def enable(cls, overlay: OverlayCore, policy: NameOnlyListings,
               lower_ttl: float) -> ShimLookups | None:
        """Answer LOOKUPs of lower-only directories in the preloaded shim;
        None where it cannot or must not (see the module's docstring)."""
        layers = overlay.layers
        if os.environ.get(ENV) == "0" or layers.remotes or layers.stack is not None:
            return None
        lib = ctypes.CDLL(None)
        if not hasattr(lib, "astrid_lk_enable"):
            return None
        return cls(lib, overlay, policy, lower_ttl)

    # ---- what the shim may answer -------------------------------------------

    def node_changed(self, node: Node) -> None:
        """Name directory `node` to the shim, or take it back, as its state
        says now; a file's READs and GETATTRs go to the daemon again (copied
        up). A node whose last name went (open, removed) is the daemon's."""
        if not node.is_dir:
            self._lib.astrid_lk_file_drop(node.ino)
            return
        if self._updirs:
            self._lib.astrid_lk_updir(node.ino, None, 0, 0, 0, None, 0, 0, 0)
        lower = self.ov.lower_only(node) if node.links or node.ino == ROOT_INO else None
        if lower is None or lower.startswith(b"/"):
            self._lib.astrid_lk_dir(node.ino, 0, None, 0)
        else:
            parent = node.links[0][0] if node.links else node.ino
            self._lib.astrid_lk_dir(node.ino, parent, lower, len(lower))

    def files_listed(self, files: list[tuple[int, bytes]]) -> None:
        """Regular files (inode, lower path) a full listing just handed the
        kernel, each still only in the lower layer with one name: the shim
        reads them as it reads the files it found itself."""
        if files:
            blob = b"".join(_FILE.pack(ino, len(path)) + path for ino, path in files)
            self._lib.astrid_lk_files(blob, len(blob))

    def dropped(self, ino: int) -> None:
        self._lib.astrid_lk_dir(ino, 0, None, 0)
        if self._updirs:
            self._lib.astrid_lk_updir(ino, None, 0, 0, 0, None, 0, 0, 0)

    def upper_dir_answered(self, node: Node, st: StatLike, lower_mtime_ns: int) -> None:
        """The daemon just answered a GETATTR of directory `node`, which has
        an upper directory (whose lstat is `st`; `lower_mtime_ns`: its lower
        directory's mtime as the daemon last saw it, for a merged one): the
        shim answers its next ones itself while that stays so (part 19), and
        LOOKUPs of names the directory does not show (shim version 31)."""
        if not self._updirs or not node.in_upper or not node.is_dir \
                or not (node.links or node.ino == ROOT_INO):
            return
        lower = node.lower
        if lower is not None and lower.startswith(b"/"):
            return
        try:
            path = self.ov.path(node)
        except OSError:
            return
        self._lib.astrid_lk_updir(
            node.ino, path, len(path), st.st_ino, lower is not None, lower or b"",
            len(lower or b""), lower_mtime_ns, self.ov.is_merged(node))

    def _tagged(self, dev: int, tag: int) -> None:
        self._lib.astrid_lk_dev(dev, tag)

    # ---- what the shim answered ---------------------------------------------

    def absorb(self) -> None:
        """Count the lookups the shim answered since the last call, as the
        daemon's own lookup would have: intern the node, one lookup each;
        then take the files it made (part 22)."""
        self.absorbs += 1
        self._absorb_lookups()
        if self.creates is not None:
            self.creates.absorb()

    def _absorb_lookups(self) -> None:
        got = 0
        while not got:
            # (over io_uring the queue threads may add entries between the two
            # calls: take then copies nothing, and we ask again)
            size = self._lib.astrid_lk_pending()
            if not size:
                return
            buf = self._buffer(size)
            got = self._lib.astrid_lk_take(buf, size)
        data = ctypes.string_at(buf, got)
        found: list[tuple[int, int, bool, bytes]] = []
        unpack = _RECORD.unpack_from
        head = _RECORD.size
        off = 0
        while off < got:
            parent_ino, ino, kind, length = unpack(data, off)
            off += head + length
            found.append((parent_ino, ino, kind == _DIR, data[off - length:off]))
        counted = self.ov.table.add_lower_lookups(found)
        if counted != len(found):
            # Cannot happen: a directory is dropped only at a FORGET, which
            # comes after its children's entries were absorbed.
            log.error("%d shim lookups in unknown directories", len(found) - counted)
        self.policy.looked_up_many(found)
        self.absorbed += len(found)

    def _buffer(self, size: int) -> ctypes.Array[ctypes.c_char]:
        """A buffer of at least `size` bytes. Kept and grown in powers of
        two: ctypes makes a new array type for every new length and keeps it
        for good, which cost the trio thread ~8 % of its time in a cold `git
        status` (a type per absorb, ~100) and grew without bound."""
        if self._buf is None or len(self._buf) < size:
            self._buf = ctypes.create_string_buffer(1 << max(size - 1, 4095).bit_length())
        return self._buf

    def _absorb_from_shim(self) -> None:
        try:
            self.absorb()
        except Exception:  # never into C: the lookup counts are then short
            log.exception("absorbing the shim's lookups failed")

    def stats(self) -> dict[str, int]:
        """LOOKUPs answered in C (entries, negative entries), declined to
        Python; files the shim opened to answer their first READ; listings
        (READDIRPLUS) and GETATTRs it answered; files it listed by name only
        because the kernel held them already, and absorbs a queue thread asked
        for (shim version 19)."""
        out = (ctypes.c_int64 * 8)()
        self._lib.astrid_lk_stats(out)
        return {"entries": int(out[0]), "negative": int(out[1]), "declined": int(out[2]),
                "absorbed": self.absorbed, "absorbs": self.absorbs,
                "files_opened": int(out[3]),
                "listings": int(out[4]), "getattrs": int(out[5]), "held": int(out[6]),
                "absorbs_asked": int(out[7])}
