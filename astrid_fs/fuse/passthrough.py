"""FUSE passthrough: the kernel reads and writes upper files itself.

With passthrough (Linux 6.9+, the daemon root) an OPEN may be answered with
a *backing file*: the kernel then serves read, write, splice and mmap of
that open file from the backing file without asking the daemon. The shim
(native/fuse_shim.c, part 6) negotiates it in INIT and keeps a table
ino -> data path that answers most OPENs without Python; this module holds
the rules and fills the table.

What it knows:

- **Which path a file gets** (`choose`): a file in the upper layer, or one
  opened for writing (copied up first), gets passthrough on its upper file;
  a lower file opened read-only stays on the daemon path (by-inode reads,
  page cache kept, as in no_open mode), and so does a file in a remote tree,
  and a file with suid or sgid (its WRITEs must reach the daemon, which
  kills those bits: fuse/killpriv.py). A chmod makes the table forget the
  file's entry (`reconsider`), so its next open is decided again.
  Lower files stay on the daemon path because of a kernel rule: every open
  of an inode that is open for passthrough must name the *same* backing
  file, and none may use cached I/O meanwhile. A reader on a lower backing
  would make a later writer's open fail (its data must go to the upper
  copy), and kernel overlayfs lets such a reader see the copied-up data
  (tests/fs/test_mount_posix.py::test_write_through_read_only_opened_file_after_copy_up).
  On the daemon path the reader follows the copy-up, as before.
- **The kernel's rule, kept**: while an inode has live passthrough opens,
  new opens reuse that backing; while it has live daemon-path opens (a
  reader of the lower file), new opens, writers included, use the daemon
  path too. The shim counts live opens (it answers RELEASE).
- **Backings are O_RDWR on the upper file**, read-only opens included, so
  that a later writer can share the backing.
- **Bounded**: at most `MAX_BACKINGS` backings that no open holds stay
  registered (each pins a struct file in the kernel); beyond, the oldest
  buckets' idle ones are closed.

What it does not do (documented limits):

- A file held open through passthrough keeps its upper file as backing
  (the kernel cannot re-point an open file). So a commit leaves such files
  in the upper (equal to the committed lower; the daemon's `held` control
  op names them, review/journal.py asks): writes after the commit stay
  visible in the session, as on the daemon path. A write racing the commit
  itself (after the upper entry went, before the mount is told) lands in
  the removed copy, as it would on the daemon path.
- Writes through a shared writable mmap reach the upper file but not the
  mount's cached mtime until the attribute timeout.
- suid/sgid: killed by the daemon as on the daemon path (files that have
  them are not on passthrough), except for a file that gains them while a
  passthrough open holds it: writes through that open are judged as root
  without CAP_FSETID would be, not as the writer (fuse/killpriv.py;
  tests/fs/test_killpriv.py).

Where passthrough cannot be had (not root, a kernel without it, the shim
too old) the mount falls back to the daemon path for the whole mount (the
kernel's no_open mode) and `status()` says why.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import logging
import os
import stat
from dataclasses import dataclass
from typing import Any

import pyfuse3

from astrid_fs.fuse.shim import FH_OPEN_REPLY, shim_version
from astrid_fs.overlay.files import OpenFiles
from astrid_fs.overlay.inodes import Node
from astrid_fs.overlay.layers import StatLike
from astrid_fs.overlay.overlay import Overlay

log = logging.getLogger("astrid_fs.fuse.passthrough")

# The shim version that has astrid_pt_*.
PASSTHROUGH_VERSION = 6
# The shim version whose own LOOKUP answers (part 12) prime the table as
# `prime` does, and whose drain answers the table's OPENs and RELEASEs.
PRIMED_IN_C = 11
# The shim version that asks `decide` (inside its drain) about an OPEN the
# table cannot answer, instead of handing it to the open handler.
DECIDED_IN_DRAIN = 14
OPEN_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_uint32)
# Our file system's stack depth is this; the upper must be below it (an
# upper on overlayfs, depth 1, would need 2, and then nothing could stack
# on astrid-fs). 1: upper on a plain file system.
MAX_STACK_DEPTH = 1
# Idle backings kept registered (each holds one struct file in the kernel,
# not an fd of ours): about the inode fd capacity of files.py.
MAX_BACKINGS = 4096


class DataPath(enum.IntEnum):
    """The table's modes (fuse_shim.c PT_*)."""

    DAEMON = 1
    PASSTHROUGH = 2


@dataclass(frozen=True)
class Live:
    """What the shim's table says of one inode."""

    mode: int = 0
    backing_id: int = 0
    pt_opens: int = 0
    daemon_opens: int = 0
    stale: bool = False


class Choice(enum.Enum):
    DAEMON = "daemon"
    PASSTHROUGH = "passthrough"  # a new backing on the upper file
    REUSE = "reuse"  # the backing live opens already use


def privileged(mode: int) -> bool:
    """suid or sgid: writes must reach the daemon, which kills them."""
    return bool(mode & (stat.S_ISUID | stat.S_ISGID))


def choose(*, local: bool, in_upper: bool, writable: bool, live: Live,
           privileged: bool = False) -> Choice:
    """The data path of one OPEN (see the module docstring)."""
    if live.pt_opens > 0 and live.backing_id > 0:
        return Choice.REUSE
    if live.daemon_opens > 0 or not local or privileged:
        return Choice.DAEMON
    if in_upper or writable:
        return Choice.PASSTHROUGH
    return Choice.DAEMON



class Passthrough:
    """The passthrough state of one mount and the Python side of its table."""

    def __init__(self, overlay: Overlay, files: OpenFiles) -> None:
        self.ov = overlay
        self.files = files
        self._lib: Any = ctypes.CDLL(None, use_errno=True)
        self._lib.astrid_pt_query.argtypes = [ctypes.c_uint64, ctypes.POINTER(ctypes.c_int32)]
        self._lib.astrid_pt_set.argtypes = [ctypes.c_uint64, ctypes.c_int32, ctypes.c_int32]
        self._lib.astrid_pt_forget.argtypes = [ctypes.c_uint64]
        self._lib.astrid_pt_reconsider.argtypes = [ctypes.c_uint64]
        self._lib.astrid_pt_trim.argtypes = [ctypes.c_int64]
        self._lib.astrid_pt_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
        self._lib.astrid_pt_backing_open.argtypes = [ctypes.c_int]
        self._lib.astrid_pt_live.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_int]
        self._lib.astrid_pt_prime.argtypes = [ctypes.c_uint64]
        self._open_cb = OPEN_CB(self.decide)  # referenced for as long as the mount lives
        self.decides = False  # the shim asks `decide` (version 14)
        self.available: bool | None = None  # None: not probed yet (before INIT)
        self.reason = "not yet negotiated (no file opened yet)"
        self.counts = {"passthrough": 0, "daemon": 0, "fallbacks": 0}

    @classmethod
    def enable(cls, overlay: Overlay, files: OpenFiles) -> tuple[Passthrough | None, str]:
        """Turn passthrough on in the shim (call before pyfuse3.init), or
        say why it cannot be: (None, reason)."""
        if os.geteuid() != 0:
            return None, "daemon path: passthrough needs root (CAP_SYS_ADMIN)"
        version = shim_version()
        if version < PASSTHROUGH_VERSION:
            return None, f"daemon path: the FUSE shim is version {version}, passthrough needs 6"
        pt = cls(overlay, files)
        pt._lib.astrid_pt_enable(MAX_STACK_DEPTH)
        if version >= DECIDED_IN_DRAIN:
            pt._lib.astrid_pt_open_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
            pt._lib.astrid_pt_set_open_cb(pt._open_cb)
            pt.decides = True
        return pt, ""

    # ---- the kernel's answer ------------------------------------------------

    def usable(self) -> bool:
        """Whether OPENs get the table's replies (else: no_open mode)."""
        if self.available is None:
            code = int(self._lib.astrid_pt_probe())
            self.available = code == 0
            if code == 0:
                self.reason = "passthrough: upper files served by the kernel"
            else:
                self.reason = (f"daemon path: the kernel refused passthrough "
                               f"({errno.errorcode.get(code, code)}: {os.strerror(code)}; "
                               "needs Linux 6.9+ with CONFIG_FUSE_PASSTHROUGH and root)")
            log.info("%s", self.reason)
        return self.available

    # ---- opens --------------------------------------------------------------

    def _live(self, ino: int) -> Live:
        out = (ctypes.c_int32 * 5)()
        if self._lib.astrid_pt_query(ino, out) != 0:
            return Live()
        return Live(out[0], out[1], out[2], out[3], bool(out[4]))

    def open(self, node: Node, flags: int) -> pyfuse3.FileInfo:
        """The answer to an OPEN the shim's table could not give. Runs after
        any remote fetch, with no await before the reply goes out (the live
        counts must not change in between)."""
        writable = self.ov.is_write_open(flags)
        local = self.ov.remote_of(node) is None
        mode = self.ov.stat_open(node, self.files.fstat(node.ino)).st_mode if local else 0
        choice = choose(local=local, in_upper=node.in_upper, writable=writable,
                        live=self._live(node.ino), privileged=privileged(mode))
        if choice is Choice.PASSTHROUGH and not self._register(node):
            choice = Choice.DAEMON
        if choice is Choice.DAEMON:
            if writable and self.ov.remote_of(node) is None:
                self.files.inode_fd(node, write=True)  # copy-up before a writable open
            self._lib.astrid_pt_set(node.ino, DataPath.DAEMON, 0)
            self.counts["daemon"] += 1
        else:
            self.counts["passthrough"] += 1
        return pyfuse3.FileInfo(fh=FH_OPEN_REPLY | node.ino, keep_cache=True)

    def decide(self, ino: int, flags: int) -> int:
        """`open` for an OPEN the shim's table could not answer, called by the
        shim inside its receive call (shim version 14): 0 when decided (the
        table now says the reply, which the shim sends), 1 to leave the OPEN
        to the open handler (a remote file, whose fetch runs off the loop; any
        error, which the handler meets again and reports). Runs on the trio
        thread, synchronously; never raises (ctypes would answer 0)."""
        try:
            if not self.usable():
                return 1
            node = self.ov.table.get(ino)
            if self.ov.fetch_for(node, data=self.ov.is_write_open(flags)) is not None:
                return 1
            self.open(node, flags)
        except Exception as e:
            log.debug("open of inode %d left to the handler: %r", ino, e)
            return 1
        return 0

    def create(self, node: Node, mode: int) -> pyfuse3.FileInfo:
        """The open part of a CREATE answer (the file's fd is the inode's;
        `mode` the new file's)."""
        live = self._live(node.ino)
        if (live.pt_opens == 0 and live.daemon_opens == 0 and not privileged(mode)
                and self._register(node)):
            self.counts["passthrough"] += 1
        else:
            self._lib.astrid_pt_set(node.ino, DataPath.DAEMON, 0)
            self.counts["daemon"] += 1
        return pyfuse3.FileInfo(fh=FH_OPEN_REPLY | node.ino, keep_cache=True)

    def _register(self, node: Node) -> bool:
        """A backing on the node's upper file (copied up first) in the table;
        False (and the daemon path) where the kernel will not take it."""
        fd = self.files.inode_fd(node, write=True)
        backing = int(self._lib.astrid_pt_backing_open(fd))
        if backing <= 0:
            # ELOOP: the upper is itself stacked (overlayfs); EPERM: lost
            # the capability. The file stays on the daemon path.
            self.counts["fallbacks"] += 1
            log.info("passthrough refused for inode %d: %s", node.ino, os.strerror(-backing))
            return False
        # Trim first: the new entry has no open counted yet and must not go.
        self._lib.astrid_pt_trim(MAX_BACKINGS)
        self._lib.astrid_pt_set(node.ino, DataPath.PASSTHROUGH, backing)
        return True

    def prime(self, node: Node, st: StatLike) -> None:
        """A lower (or remote) regular file the kernel is told of: read-only
        opens of it take the daemon path (`choose`), so the shim may answer
        its first OPEN too (as no_open mode would have skipped it)."""
        if stat.S_ISREG(st.st_mode) and self.available:
            self._lib.astrid_pt_prime(node.ino)

    def has_backing(self, ino: int) -> bool:
        return self._live(ino).backing_id > 0

    def held_upper_inodes(self) -> list[int]:
        """st_ino of every upper file the kernel holds open for passthrough:
        a commit must leave these in the upper (the kernel keeps writing to
        them; see the module docstring)."""
        room = 256
        while True:
            out = (ctypes.c_uint64 * room)()
            n = int(self._lib.astrid_pt_live(out, room))
            if n <= room:
                break
            room = n
        held = []
        for ino in out[:n]:
            node = self.ov.table.get(ino) if ino in self.ov.table else None
            if node is None or not node.in_upper:
                continue
            try:
                held.append(os.stat(self.ov.real_path(node), follow_symlinks=False).st_ino)
            except OSError:
                continue  # no name left: nothing for a commit to remove
        return held

    # ---- end of life --------------------------------------------------------

    def forget(self, ino: int) -> None:
        self._lib.astrid_pt_forget(ino)

    def reconsider(self, ino: int) -> None:
        """`ino`'s mode changed: its next open is decided again (`choose`),
        once no open holds its current data path."""
        self._lib.astrid_pt_reconsider(ino)

    def layers_changed(self) -> int:
        """After a commit, discard or rollback: idle entries go; entries
        with live opens answer no more OPENs themselves. Returns those."""
        return int(self._lib.astrid_pt_layers_changed())

    def status(self) -> dict[str, Any]:
        """For the control socket's `stats` and `astrid-fs status`."""
        out = (ctypes.c_int64 * 4)()
        self._lib.astrid_pt_stats(out)
        decided = (ctypes.c_int64 * 2)()
        if self.decides:
            self._lib.astrid_pt_open_stats(decided)
        return {"data_path": "passthrough" if self.available else "daemon",
                "decided_in_drain": int(decided[0]), "left_to_handler": int(decided[1]),
                "reason": self.reason,
                "opens_in_c": {"passthrough": out[0], "daemon": out[1]},
                "opens_in_python": dict(self.counts),
                "releases_in_c": out[2], "backings": out[3]}
