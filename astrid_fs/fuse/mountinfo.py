"""Reading the kernel's mount table: is a path a mount point, is a FUSE
mount's daemon still there."""

from __future__ import annotations

import errno
import os


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 1 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> dict[str, str]:
    """Mount point → filesystem type, from /proc/self/mountinfo."""
    points: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            points[_unescape(fields[4])] = fields[sep + 1]
    return points


def mount_device(mountpoint: str) -> str | None:
    """The "MAJ:MIN" of the topmost mount at `mountpoint` (read from the
    table, never a stat: the mount's daemon may not be serving yet)."""
    want, found = os.path.abspath(mountpoint), None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == want:
                found = fields[2]
    return found


def is_mountpoint(path: str) -> bool:
    return os.path.abspath(path) in mount_points()


def fuse_mount_alive(path: str) -> bool:
    """False if `path` is a mount whose FUSE daemon is gone (ENOTCONN)."""
    try:
        # statfs always reaches the daemon; stat may be answered from the
        # kernel's attribute cache after the daemon died.
        os.statvfs(path)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            return False
    return True
