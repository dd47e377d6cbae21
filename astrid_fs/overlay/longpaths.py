"""Layer paths of any length: a session path may be up to PATH_MAX (4096)
long; prefixed with a layer root it no longer fits path-based syscalls."""

from __future__ import annotations

import os

# Paths longer than this go through an ancestor's O_PATH fd (see LongPaths).
LONG_PATH = 3000


class LongPaths:
    """Makes layer paths of any length usable with path-based syscalls.

    A session path may be up to PATH_MAX (4096) long; prefixed with the layer
    root it no longer fits. A long path is rewritten as
    `/proc/self/fd/N/REST`, N an O_PATH fd of an ancestor directory (opened
    the same way, recursively). The fds are cached per ancestor; `forget`
    drops them all and must be called after any rename or rmdir, because an
    fd follows its directory when it moves.
    """

    _CAPACITY = 64

    def __init__(self) -> None:
        self._fds: dict[bytes, int] = {}

    def shorten(self, path: bytes) -> bytes:
        if len(path) < LONG_PATH:
            return path
        cut = path.find(b"/", len(path) - LONG_PATH // 2)
        if cut <= 0:
            return path  # a single over-long name: let the syscall say ENAMETOOLONG
        prefix = path[:cut]
        fd = self._fds.pop(prefix, None)
        if fd is None:
            fd = os.open(self.shorten(prefix), os.O_PATH | os.O_DIRECTORY)
            while len(self._fds) >= self._CAPACITY:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[prefix] = fd  # most recently used last
        return b"/proc/self/fd/%d%s" % (fd, path[cut:])

    def forget(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
