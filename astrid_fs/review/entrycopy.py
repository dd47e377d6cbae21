"""Copy one filesystem entry (file, symlink, device/fifo, whiteout, empty dir)
with its metadata: mode, owner, times, xattrs. File data is reflinked
(FICLONE) where the filesystem shares extents, else copied in the kernel
(copy_file_range via shutil). Used by commit staging, snapshots, rollback.
Knows nothing about sessions or the overlay's meaning of xattrs: the caller
says which xattrs to carry with `keep_xattr`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
from collections.abc import Callable

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h

XattrFilter = Callable[[str], bool]


def all_xattrs(_: str) -> bool:
    return True


def clone_or_copy(src: str, dst: str, mode: int = 0o600) -> bool:
    """Create `dst` (must not exist) with the data of regular file `src`.
    True if the data was reflinked (shares no writable blocks either way)."""
    sfd = os.open(src, os.O_RDONLY)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            try:
                fcntl.ioctl(dfd, FICLONE, sfd)
                return True
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL,
                                   errno.ENOTTY, errno.EPERM):
                    raise
            with os.fdopen(sfd, "rb", closefd=False) as fsrc, \
                    os.fdopen(dfd, "wb", closefd=False) as fdst:
                shutil.copyfileobj(fsrc, fdst, 1 << 20)
            return False
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def copy_xattrs(src: str, dst: str, keep: XattrFilter = all_xattrs) -> None:
    """Make `dst`'s xattrs (those `keep` accepts) equal to `src`'s."""
    want = {k: os.getxattr(src, k, follow_symlinks=False)
            for k in _listxattr(src) if keep(k)}
    for key in _listxattr(dst):
        if keep(key) and key not in want:
            _try_xattr(dst, key, None)
    for key, value in want.items():
        _try_xattr(dst, key, value)


def _listxattr(path: str) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return []
        raise


def _try_xattr(path: str, key: str, value: bytes | None) -> None:
    """Set (or with None remove) one xattr. user.* xattrs are refused on
    symlinks and devices (EPERM): there is nothing to carry then."""
    try:
        if value is None:
            os.removexattr(path, key, follow_symlinks=False)
        else:
            os.setxattr(path, key, value, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENODATA):
            raise


def copy_meta(src: str, dst: str, st: os.stat_result, keep: XattrFilter = all_xattrs,
              times: bool = True) -> None:
    """Carry xattrs, owner, mode and (last, since the rest moves ctime only)
    times from `src` (whose lstat is `st`) to `dst`."""
    copy_xattrs(src, dst, keep)
    if os.geteuid() == 0:
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    if times:
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_entry(src: str, dst: str, keep: XattrFilter = all_xattrs) -> os.stat_result:
    """Create `dst` as a copy of the non-directory (or, for a dir, an empty
    dir) `src`, with its metadata. Returns the lstat of `src`."""
    st = os.lstat(src)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        clone_or_copy(src, dst)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISDIR(mode):
        os.mkdir(dst, 0o700)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dst, 0o600)
    else:
        os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
    copy_meta(src, dst, st, keep)
    return st


def copy_tree(src: str, dst: str, keep: XattrFilter = all_xattrs) -> None:
    """Copy the tree at `src` to a new `dst`, every entry with its metadata;
    hard links inside the tree stay hard links. Dir times are set last."""
    seen: dict[tuple[int, int], str] = {}
    _copy_tree(src, dst, keep, seen)


def _copy_tree(src: str, dst: str, keep: XattrFilter,
               seen: dict[tuple[int, int], str]) -> None:
    st = os.lstat(src)
    if not stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) and key in seen:
            os.link(seen[key], dst)
            return
        copy_entry(src, dst, keep)
        if st.st_nlink > 1:
            seen[key] = dst
        return
    os.mkdir(dst, 0o700)
    with os.scandir(src) as it:
        names = sorted(e.name for e in it)
    for name in names:
        _copy_tree(os.path.join(src, name), os.path.join(dst, name), keep, seen)
    copy_meta(src, dst, st, keep)
