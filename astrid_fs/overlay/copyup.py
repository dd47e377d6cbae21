"""Copy-up: make an upper-layer copy of a lower entry, atomically.

The copy is built in the session's work dir (same filesystem as the upper
layer): data (holes kept), owner, mode, times and xattrs, plus the origin
fingerprint; then one step puts it in place: a regular file is built as an
unnamed file and linked at its name (tmpfile.py), anything else (or a file
where the filesystem has no unnamed files) is built under a temp name and
renamed. A crash leaves either no upper entry (the lower still shows) or the
complete copy, never a torn one. Only the copied entry is created: callers
copy up parents first.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat

from astrid_fs.overlay import basecontent, tmpfile
from astrid_fs.overlay.layers import RemoteTree, SyntheticStat
from astrid_fs.overlay.whiteout import Origin, OverlayXattrs, kind_of_mode

_counter = itertools.count()
_CHUNK = 1 << 20


def copy_xattrs(src: bytes | int, dst: bytes | int, names: OverlayXattrs) -> None:
    """Copy every xattr of `src` to `dst` (each a path, or an fd) except the
    overlay's private ones."""
    try:
        keys = os.listxattr(src) if isinstance(src, int) \
            else os.listxattr(src, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for key in keys:
        if names.is_private(key):
            continue
        try:
            value = os.getxattr(src, key) if isinstance(src, int) \
                else os.getxattr(src, key, follow_symlinks=False)
            if isinstance(dst, int):
                os.setxattr(dst, key, value)
            else:
                os.setxattr(dst, key, value, follow_symlinks=False)
        except OSError as e:
            # user.* is not allowed on symlinks and special files on most
            # filesystems; security.* may be refused: skip what cannot land.
            if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.ENODATA):
                raise


_SMALL = 1 << 20


def copy_data(src_fd: int, dst_fd: int, size: int) -> bytes | None:
    """Copy `size` bytes, keeping holes (SEEK_DATA/SEEK_HOLE) where possible.
    Returns the bytes copied when the file was small enough to copy in one
    read (so a caller can keep them too), else None."""
    if size <= _SMALL:
        # Small files (most copy-ups): one read and one write beat
        # copy_file_range, whose in-kernel copy also makes the fsync slower.
        chunk = os.pread(src_fd, size, 0)
        if chunk:
            os.pwrite(dst_fd, chunk, 0)
        if len(chunk) != size:
            os.ftruncate(dst_fd, size)
        return chunk
    offset = 0
    while offset < size:
        try:
            data_start = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole up to EOF
                break
            data_start = offset
        hole_start = os.lseek(src_fd, data_start, os.SEEK_HOLE)
        pos = data_start
        while pos < hole_start:
            want = min(_CHUNK * 8, hole_start - pos)
            try:
                done = os.copy_file_range(src_fd, dst_fd, want, pos, pos)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                chunk = os.pread(src_fd, min(_CHUNK, want), pos)
                done = os.pwrite(dst_fd, chunk, pos) if chunk else 0
            if done == 0:
                break
            pos += done
        offset = hole_start
    os.ftruncate(dst_fd, size)
    return None


def temp_name(tmp_dir: bytes) -> bytes:
    return b"%s/cu-%d-%d" % (tmp_dir, os.getpid(), next(_counter))


def copy_up(lower_path: bytes, upper_path: bytes, tmp_dir: bytes, names: OverlayXattrs,
            rel_path: bytes, *, with_data: bool = True, sync: bool = True,
            st: os.stat_result | None = None, held: list[int] | None = None) -> None:
    """Copy the lower entry at `lower_path` (whose lstat is `st`, if the
    caller has it) to `upper_path` (whose parent exists; an entry there is
    replaced).

    `with_data=False` makes an empty regular file (for opens with O_TRUNC).
    Directories are copied without their children. With `held`, a regular
    file's copy made as an unnamed file keeps its read-write fd open and
    appends it there (the caller's to close) instead of closing it.
    """
    if st is None:
        st = os.lstat(lower_path)
    if stat.S_ISREG(st.st_mode):
        fd = tmpfile.open_unnamed(tmp_dir)
        if fd is not None:
            _copy_file_unnamed(fd, lower_path, upper_path, tmp_dir, st, names, rel_path,
                               with_data, sync, held)
            return
    tmp = temp_name(tmp_dir)
    try:
        if stat.S_ISREG(st.st_mode):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _fill_file(fd, lower_path, tmp_dir, st, names, rel_path, with_data, sync)
            finally:
                os.close(fd)
        else:
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(tmp, 0o700)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(lower_path), tmp)
            else:
                os.mknod(tmp, st.st_mode, st.st_rdev)
            _copy_meta(lower_path, tmp, st, stat.S_IMODE(st.st_mode), names, rel_path,
                       with_data)
        os.rename(tmp, upper_path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _copy_file_unnamed(fd: int, lower_path: bytes, upper_path: bytes, tmp_dir: bytes,
                       st: os.stat_result, names: OverlayXattrs, rel_path: bytes,
                       with_data: bool, sync: bool, held: list[int] | None) -> None:
    """The copy of a regular file built in the unnamed file `fd` (closed
    here, or once linked handed to `held`), then linked at `upper_path`: a
    daemon killed before the link leaves nothing (tmpfile.py)."""
    linked = False
    try:
        _fill_file(fd, lower_path, tmp_dir, st, names, rel_path, with_data, sync)
        try:
            tmpfile.link(fd, upper_path)
        except FileExistsError:
            # A copy made again over an upper copy (unsynced.py's re-copy
            # of a torn one): a link cannot replace, a rename can.
            tmp = temp_name(tmp_dir)
            tmpfile.link(fd, tmp)
            try:
                os.rename(tmp, upper_path)
            except BaseException:
                _remove_quietly(tmp)
                raise
        linked = True
    finally:
        if linked and held is not None:
            held.append(fd)
        else:
            os.close(fd)


def _fill_file(dst: int, lower_path: bytes, tmp_dir: bytes, st: os.stat_result,
               names: OverlayXattrs, rel_path: bytes, with_data: bool, sync: bool) -> None:
    """Make `dst` (a new file) the copy of a regular lower file, every
    attribute set through the fd (no path walks): data, owner, mode,
    xattrs, origin, then times; and keep its base content (for merges)."""
    content: bytes | None = b""
    src = os.open(lower_path, os.O_RDONLY | os.O_CLOEXEC) if with_data and st.st_size \
        else None
    try:
        if src is not None:
            content = copy_data(src, dst, st.st_size)
        if sync:
            os.fsync(dst)
        os.fchown(dst, st.st_uid, st.st_gid)
        os.fchmod(dst, stat.S_IMODE(st.st_mode))
        copy_xattrs(lower_path if src is None else src, dst, names)
    finally:
        if src is not None:
            os.close(src)
    try:
        os.setxattr(dst, names.origin, Origin.of_stat(os.fsdecode(rel_path), st).encode())
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP):  # (as _copy_meta)
            raise
    if with_data:
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    if basecontent.wanted(st):  # (what the project held: for merges)
        if content is None or not with_data:
            basecontent.keep(tmp_dir, rel_path, basecontent.copy_from(lower_path),
                             st.st_mtime_ns)
        else:
            basecontent.keep_bytes(tmp_dir, rel_path, content, st.st_mtime_ns)


def _copy_meta(src: bytes, tmp: bytes, st: os.stat_result, mode: int, names: OverlayXattrs,
               rel_path: bytes, with_data: bool) -> None:
    is_link = stat.S_ISLNK(st.st_mode)
    os.lchown(tmp, st.st_uid, st.st_gid)
    if not is_link:
        os.chmod(tmp, mode)
    copy_xattrs(src, tmp, names)
    origin = Origin.of_stat(os.fsdecode(rel_path), st)
    try:
        os.setxattr(tmp, names.origin, origin.encode(), follow_symlinks=False)
    except OSError as e:
        # user.* xattrs cannot go on symlinks: such a copy keeps no origin.
        if e.errno not in (errno.EPERM, errno.ENOTSUP):
            raise
    if with_data:
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _remove_quietly(path: bytes) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def copy_up_remote(tree: RemoteTree, rel: bytes, lower_rel: bytes, upper_path: bytes,
                   tmp_dir: bytes, names: OverlayXattrs, *, with_data: bool = True,
                   sync: bool = True) -> os.stat_result:
    """Copy-up from a remote tree: like `copy_up`, with content from
    `tree.fetch_to` (the caller warmed the content first) and an origin that
    records the remote fingerprint (ETag) for conflict detection."""
    st = tree.stat(rel)
    if st is None:
        raise FileNotFoundError(errno.ENOENT, "remote entry vanished", os.fsdecode(lower_rel))
    tmp = temp_name(tmp_dir)
    try:
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(tmp, 0o700)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if with_data:
                    tree.fetch_to(rel, fd)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        origin = Origin(path=os.fsdecode(lower_rel), kind=kind_of_mode(st.st_mode),
                        ino=st.st_ino, dev=st.st_dev, size=st.st_size, mtime_ns=st.st_mtime_ns,
                        mode=st.st_mode, blake3=tree.fingerprint(rel))
        os.setxattr(tmp, names.origin, origin.encode(), follow_symlinks=False)
        if with_data:
            os.utime(tmp, ns=(st.st_mtime_ns, st.st_mtime_ns))
            if stat.S_ISREG(st.st_mode) and st.st_size <= basecontent.LIMIT:
                basecontent.keep(tmp_dir, lower_rel, basecontent.copy_from(tmp),
                                 st.st_mtime_ns)
        os.rename(tmp, upper_path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return os.lstat(upper_path)


def copy_up_synthetic_dir(st: SyntheticStat, lower_rel: bytes, upper_path: bytes,
                          tmp_dir: bytes, names: OverlayXattrs) -> None:
    """Make the upper copy of a directory that only the mount table implies
    (above a remote mount point): mode 0755, its synthetic inode as origin."""
    tmp = temp_name(tmp_dir)
    os.mkdir(tmp, 0o755)
    try:
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        origin = Origin(path=os.fsdecode(lower_rel), kind="dir", ino=st.st_ino, dev=st.st_dev,
                        size=0, mtime_ns=st.st_mtime_ns, mode=st.st_mode)
        os.setxattr(tmp, names.origin, origin.encode(), follow_symlinks=False)
        os.rename(tmp, upper_path)
    except BaseException:
        _remove_quietly(tmp)
        raise
