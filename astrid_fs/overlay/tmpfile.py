"""Unnamed files (O_TMPFILE) in the work dir, named once they are whole.

A copy (copy-up, base content) is built as an unnamed file on the upper's
file system and then linked under its name: one linkat, which like a rename
shows readers no copy or a whole one, but never replaces an entry (a taken
name is `FileExistsError`) and leaves nothing behind when the daemon dies
before it (a named temp file would stay in the work dir until the next
mount). It is also cheaper than a named temp file and a rename (no entry in
the work dir, no cross-directory rename): measured in copyup.py.

Knows: how to make and name such a file. Does not know what goes in it.
Where the file system has no O_TMPFILE, `open_unnamed` says so and callers
fall back to a named temp file.
"""

from __future__ import annotations

import errno
import os

# What open(O_TMPFILE) fails with where the file system (or an old kernel,
# which reads the flag as O_DIRECTORY) cannot make unnamed files.
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)


def open_unnamed(dir_path: bytes) -> int | None:
    """A write-only fd of a new unnamed regular file (mode 0600) on the file
    system of `dir_path`; None where that file system cannot make one."""
    try:
        return os.open(dir_path, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return None
        raise


def link(fd: int, path: bytes) -> None:
    """Give the unnamed file `fd` the name `path` (same mount; its parent
    exists). FileExistsError if `path` is taken: nothing is replaced."""
    # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N, as open(2) shows for
    # O_TMPFILE (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH). Python's
    # os.link calls link(2), which does not follow that magic link (EXDEV),
    # unless a dir fd is given: the source path is absolute, so linkat
    # ignores the dir fd passed (any open fd does).
    os.link(b"/proc/self/fd/%d" % fd, path, src_dir_fd=fd, follow_symlinks=True)
