"""Killing suid/sgid in the daemon (FUSE_HANDLE_KILLPRIV_V2, shim part 13).

Without it the kernel asks GETXATTR security.capability before every write to
a FUSE file (FUSE clears SB_NOSEC, so `file_remove_privs` checks each time):
one extra round trip per write, which is half the cost of appending to a file
that is already in the upper layer. With it the kernel marks a file it found
without suid, sgid or capabilities S_NOSEC and asks nothing on later writes
(until the file's attributes are next refreshed). In exchange the file system
kills suid/sgid itself, when the kernel says the caller may not keep them: a
WRITE flagged FUSE_WRITE_KILL_SUIDGID, a SETATTR flagged FATTR_KILL_SUIDGID
(a truncate by a caller without CAP_FSETID; a chown of a non-directory). The
daemon runs as root, whose own writes never clear those bits, so it clears
them by hand, exactly as the kernel would (`killed_mode`: suid always; sgid
when the group may execute or the caller is not in the file's group). No file
here has capabilities to kill (the shim answers every `security.capability`
probe "none").

libfuse 3.14 hands neither flag to the handlers; the shim reads it from the
raw request. A WRITE the shim answers itself (an upper file's fd in its
table) is killed there; for any other flagged request the shim leaves the
inode in a table that the daemon's write and setattr handlers take from
(`ShimKills.take`) before they act, and they kill after.

Passthrough mounts ask for it too (shim version 16): their writes go to the
backing file without a WRITE to flag, but the kernel still probed before each
one (`backing_file_write_iter` calls `file_remove_privs` on the FUSE file: a
round trip per 1 MiB of a large write). So a file with suid or sgid is kept
off passthrough (passthrough.py `choose`): its WRITEs reach the daemon,
flagged as on a daemon-path mount. A file that gains suid/sgid while a
passthrough open holds it (a chmod by another process) keeps that open's
backing, which the kernel writes under the credentials it was registered
with: the shim registers backings without CAP_FSETID, so the upper's file
system clears the bits on such a write, judging as root without CAP_FSETID
would (suid always; sgid when the group may execute or root is not in the
file's group) where the kernel would judge the writer.
`ASTRID_FS_KILLPRIV_V2=0` turns it off (the kernel then probes and kills as
before), for A/B benchmarks.
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass
from typing import Any

from astrid_fs.fuse.shim import shim_version
from astrid_fs.overlay.inodes import Node
from astrid_fs.overlay.layers import StatLike
from astrid_fs.overlay.overlay import Overlay, SetAttr

KILLPRIV_VERSION = 10
KILLPRIV_PASSTHROUGH_VERSION = 16
ENV = "ASTRID_FS_KILLPRIV_V2"


def in_group(pid: int, caller_gid: int, gid: int) -> bool:
    """Is process `pid` (fs gid `caller_gid`) in group `gid`? Its supplementary
    groups from /proc (a process already gone: no)."""
    if caller_gid == gid:
        return True
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return str(gid) in line.split()[1:]
    except OSError:
        pass
    return False


def killed_mode(mode: int, gid: int, caller: Caller) -> int:
    """`mode` (of a file of group `gid`) as the kernel leaves it when `caller`
    may not keep privileges (`setattr_should_drop_suidgid`): suid goes; sgid
    goes if the group may execute, or if the caller is not in the group and
    is not root (a chown flags its kill whoever asks)."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not (
            caller.uid == 0 or in_group(caller.pid, caller.gid, gid))):
        mode &= ~stat.S_ISGID
    return mode


def drop(ov: Overlay, node: Node, st: StatLike, gid: int, caller: Caller,
         fd: int | None) -> StatLike:
    """Clear what `caller` may not keep of `node`'s suid/sgid (`st` its stat,
    `gid` its group before the request changed it); the stat after (`st`
    itself when nothing had to go)."""
    mode = killed_mode(st.st_mode, gid, caller)
    if mode == st.st_mode:
        return st
    return ov.setattr(node.ino, SetAttr(mode=stat.S_IMODE(mode)), fd)


@dataclass(frozen=True)
class Caller:
    """Who sent the request that asked for a kill (uid None: not known, and
    not root: a flagged WRITE's caller lacks CAP_FSETID)."""

    uid: int | None
    gid: int
    pid: int


class ShimKills:
    """The Python side of shim part 13."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        lib.astrid_kp_take.argtypes = [ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint32)]
        lib.astrid_kp_take.restype = ctypes.c_int
        lib.astrid_kp_inval.argtypes = [ctypes.c_uint64]
        lib.astrid_kp_inval.restype = ctypes.c_int
        lib.astrid_kp_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
        lib.astrid_kp_stats.restype = None

    @classmethod
    def enable(cls, passthrough: bool) -> ShimKills | None:
        """Ask for KILLPRIV_V2 at INIT (call before mounting, after
        passthrough is enabled); None without a shim that has it (for a
        passthrough mount, version 16), or when switched off."""
        need = KILLPRIV_PASSTHROUGH_VERSION if passthrough else KILLPRIV_VERSION
        if shim_version() < need or os.environ.get(ENV, "1") == "0":
            return None
        lib = ctypes.CDLL(None)
        lib.astrid_kp_enable()
        return cls(lib)

    def take(self, ino: int) -> Caller | None:
        """Who sent the request the daemon is handling for `ino`, if it asked
        for a kill."""
        caller = (ctypes.c_uint32 * 2)()
        if not self._lib.astrid_kp_take(ino, caller):
            return None
        return Caller(None, int(caller[0]), int(caller[1]))

    def invalidate(self, ino: int) -> None:
        """Drop the kernel's cached attributes of `ino` (after a kill whose
        reply carries none, a WRITE's)."""
        self._lib.astrid_kp_inval(ino)

    def stats(self) -> dict[str, int]:
        out = (ctypes.c_int64 * 4)()
        self._lib.astrid_kp_stats(out)
        return {"asked": int(out[0]), "killed_in_c": int(out[1]),
                "handed_to_daemon": int(out[2]), "capability_probes": int(out[3])}
