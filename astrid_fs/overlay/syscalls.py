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
