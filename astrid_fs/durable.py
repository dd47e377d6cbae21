"""Durable, atomic file replacement: temp file + fsync + rename + dir fsync.

After `write_atomic` returns, a crash leaves either the old content or the
new one at `path`, never a torn mix, and the rename itself is on disk.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)


def sync_fs(path: str | os.PathLike[str]) -> None:
    """syncfs(2) the filesystem holding directory `path`: every write to it
    so far is durable (and no other filesystem is waited for, as sync(2)
    would). One call replaces an fsync per staged file (same guarantee
    before a rename)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fspath(path))
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and creations in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], content: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `content` atomically and durably."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def remove_entry(path: str | os.PathLike[str], *, tree: bool) -> None:
    """Remove whatever is at `path` (nothing there is fine): a file, link or
    special file; a directory only if empty, or with everything under it
    when `tree`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
    elif tree:
        shutil.rmtree(path)
    else:
        os.rmdir(path)
