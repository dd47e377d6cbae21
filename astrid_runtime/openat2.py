"""`openat2(2)` through ctypes: open a path strictly beneath a directory fd.

Python's `os` module has no `openat2`. This module calls the syscall
directly (number 437 on every Linux architecture since 5.6, unified
syscall table) with a `struct open_how`, and raises `OSError` with the
kernel's errno. It knows nothing about plugins, grants or the ABI.

What the resolve flags guarantee (see openat2(2)):

- `RESOLVE_BENEATH`: every step of the walk, including symlink targets,
  must stay beneath `dirfd`; an absolute path, an absolute symlink or a
  `..` that would climb above `dirfd` fails with `EXDEV`.
- `RESOLVE_NO_MAGICLINKS`: `/proc/*/fd/*`-style magic links fail with `ELOOP`.
- `RESOLVE_NO_SYMLINKS`: any symlink fails with `ELOOP` (not used by the
  VFS: symlinks that stay beneath are allowed, see docs/abi.md).

The check is done by the kernel during the walk, so there is no
check-then-use race with a tree that changes underneath.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

#: `__NR_openat2`: the same number on x86_64, aarch64, arm, riscv (unified table, Linux 5.6).
SYS_OPENAT2 = 437

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

#: What the VFS uses for every path a plugin names.
RESOLVE_STRICT = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS


class OpenHow(ctypes.Structure):
    """`struct open_how` (include/uapi/linux/openat2.h)."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


@dataclass(frozen=True)
class _Libc:
    syscall: ctypes._CFuncPtr  # type: ignore[name-defined]


def _load() -> _Libc:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.syscall
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(OpenHow),
                   ctypes.c_size_t]
    return _Libc(fn)


_LIBC = _load()


def openat2(dirfd: int, path: str | bytes, flags: int, mode: int = 0,
            resolve: int = RESOLVE_STRICT) -> int:
    """Open `path` relative to `dirfd` with `resolve` restrictions; the new fd.

    Raises `OSError(errno)` exactly as the kernel reports it (`EXDEV` for an
    escape under `RESOLVE_BENEATH`, `ELOOP` for a refused link, `ENOSYS` on
    kernels before 5.6). `O_CLOEXEC` is always added.
    """
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise OSError(22, "path contains a NUL byte")
    how = OpenHow(flags | os.O_CLOEXEC, mode if flags & (os.O_CREAT | os.O_TMPFILE) else 0,
                  resolve)
    fd = _LIBC.syscall(SYS_OPENAT2, dirfd, raw, ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)}: {raw.decode(errors='replace')!r}")
    return int(fd)


__all__ = ["RESOLVE_BENEATH", "RESOLVE_IN_ROOT", "RESOLVE_NO_MAGICLINKS", "RESOLVE_NO_SYMLINKS",
           "RESOLVE_NO_XDEV", "RESOLVE_STRICT", "SYS_OPENAT2", "openat2"]
