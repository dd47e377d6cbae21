"""What the FUSE adapter sends back: the one errno boundary, entry and
statfs replies, and the caller's identity. Pure conversions, no state."""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from astrid_fs.fuse.shim import GEN_NAME_ONLY
from astrid_fs.overlay.inodes import UnknownInode
from astrid_fs.overlay.layers import StatLike
from astrid_fs.overlay.overlay import Owner

log = logging.getLogger("astrid_fs.fuse")

NAME_MAX = 255
P = ParamSpec("P")
R = TypeVar("R")


def fuse_errors(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """The one errno boundary: an OSError from the overlay becomes the
    FUSEError the kernel passes on; UnknownInode is an inode the kernel told
    us to forget and still names (ESTALE). Any other exception is a bug:
    logged, EIO (a KeyError too: all of them once meant ESTALE, which is how
    a lost inode count went unnoticed)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except UnknownInode:
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            # A bug in one request must not take the mount down: log it,
            # answer EIO, keep serving.
            log.exception("internal error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def entry_reply(ino: int, st: StatLike, *, ttl: float, nlink: int,
                generation: int = 0) -> pyfuse3.EntryAttributes:
    """The attributes of `ino` as the kernel caches them for `ttl` seconds."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = ino
    e.generation = generation
    e.entry_timeout = e.attr_timeout = ttl
    e.st_mode = st.st_mode
    e.st_nlink = nlink
    e.st_uid = st.st_uid
    e.st_gid = st.st_gid
    e.st_rdev = st.st_rdev
    e.st_size = st.st_size
    e.st_blksize = st.st_blksize
    e.st_blocks = st.st_blocks
    e.st_atime_ns = st.st_atime_ns
    e.st_mtime_ns = st.st_mtime_ns
    e.st_ctime_ns = st.st_ctime_ns
    return e


def name_only_entry(ino: int, mode: int) -> pyfuse3.EntryAttributes:
    """A READDIRPLUS entry without attributes (shim part 11): the kernel
    lists it with d_ino `ino` and the type of `mode`, and makes no dentry."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = ino
    e.st_mode = mode
    e.generation = GEN_NAME_ONLY
    return e


def negative_entry(ttl: float) -> pyfuse3.EntryAttributes:
    """"No such name", cached by the kernel for `ttl` seconds."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = 0
    e.entry_timeout = ttl
    return e


def statvfs_reply(vfs: os.statvfs_result) -> pyfuse3.StatvfsData:
    out = pyfuse3.StatvfsData()
    for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                  "f_files", "f_ffree", "f_favail"):
        setattr(out, field, getattr(vfs, field))
    out.f_namemax = NAME_MAX
    return out


def owner(ctx: Any) -> Owner:
    return Owner(ctx.uid, ctx.gid)


def drop_kernel_caches(inodes: Iterable[int]) -> None:
    """Drop the kernel's attributes and cached pages (a directory's: its
    listing) of each inode; one the kernel has forgotten is skipped.
    Blocking: call it from a worker thread."""
    for ino in inodes:
        try:
            pyfuse3.invalidate_inode(ino)
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.warning("invalidate_inode(%d): %s", ino, e)


async def invalidate_later(ino: int) -> None:
    """Drop the kernel's caches of `ino` after the current reply went out."""
    try:
        await trio.to_thread.run_sync(drop_kernel_caches, [ino])
    except Exception as e:  # a system task must never raise
        log.warning("invalidate_inode(%d) failed: %s", ino, e)
