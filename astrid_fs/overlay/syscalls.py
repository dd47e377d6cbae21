"""Linux system calls the standard library lacks: renameat2 and its flags."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
AT_FDCWD = -100

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
    _renameat2.restype = ctypes.c_int


def renameat2(src: bytes, dst: bytes, flags: int) -> None:
    """rename(2) with flags; raises OSError (EINVAL/ENOSYS if unsupported)."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 not available")
    if _renameat2(AT_FDCWD, src, AT_FDCWD, dst, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(src), None, os.fsdecode(dst))


def link_open_file(fd: int, dst: bytes) -> None:
    """Give the open file `fd` the name `dst` (an O_TMPFILE file too):
    linkat(2) of /proc/self/fd/FD with AT_SYMLINK_FOLLOW. (os.link calls
    plain link(2), which would link the /proc symlink itself, unless a dir
    fd is given: hence the one for "/", which absolute paths ignore.)"""
    root = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", dst, src_dir_fd=root, follow_symlinks=True)
    finally:
        os.close(root)
