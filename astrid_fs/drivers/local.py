"""The `local` driver: a host directory as a lower tree.

`local_root` is the directory itself, so the overlay keeps its fast path of
direct os calls for reads; this driver serves the rest (listings for tools
that go through the interface, and commit's write-back). Host errors map to
driver errors by errno. Writes are atomic: temp file in the target
directory, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from astrid_fs.drivers.base import (
    Capabilities,
    DriverSpec,
    EntryStat,
    Kind,
    Options,
    Reader,
    check_rel,
    join_rel,
    synthetic_ino,
)
from astrid_fs.drivers.errors import (
    ConfigError,
    DriverError,
    InvalidPath,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
)
from astrid_fs.durable import remove_entry

_COPY_CHUNK = 1 << 20
_ERRNO_TYPES: dict[int, type[DriverError]] = {
    errno.ENOENT: NotFound,
    errno.ENOTDIR: NotADirectory,
    errno.EISDIR: IsADirectory,
    errno.ENOTEMPTY: NotEmpty,
    errno.EEXIST: NotEmpty,
    errno.EACCES: PermissionDenied,
    errno.EPERM: PermissionDenied,
    errno.EINVAL: InvalidPath,
}


def _translate(e: OSError, what: str) -> DriverError:
    kind = _ERRNO_TYPES.get(e.errno or 0, DriverError)
    err = kind(f"{what}: {e.strerror or e}")
    if kind is DriverError and e.errno:
        err.errno = e.errno
    return err


@contextmanager
def _host(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise _translate(e, what) from e


def _kind(st: os.stat_result) -> Kind | None:
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return None  # devices, fifos, sockets: not part of a project tree


def path_from_source(source: str) -> Path:
    """The directory a `local` source names: `file:///abs`, `/abs` or `~/dir`."""
    if source.startswith("file:"):
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"{source}: file URLs name a local path (file:///dir)")
        return Path(unquote(parts.path))
    return Path(source).expanduser()


class _FdReader:
    """pread on one fd: positionless, so safe from many threads."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._closed = False

    def pread(self, size: int, offset: int) -> bytes:
        with _host("read"):
            return os.pread(self._fd, size, offset)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)


class LocalDriver:
    """A host directory. Never follows a symlink inside it for stat or listing."""

    def __init__(self, root: Path, source: str | None = None) -> None:
        self.root = root.absolute()
        self._source = source or str(self.root)

    @property
    def source(self) -> str:
        return self._source

    @property
    def is_remote(self) -> bool:
        return False

    @property
    def local_root(self) -> Path | None:
        return self.root

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(symlinks=True, modes=True, empty_dirs=True, atomic_rename=True)

    def _path(self, rel: str) -> Path:
        check_rel(rel)
        return self.root / rel if rel else self.root

    def _entry(self, rel: str, st: os.stat_result) -> EntryStat | None:
        kind = _kind(st)
        if kind is None:
            return None
        return EntryStat(kind, st.st_size, st.st_mtime_ns, st.st_mode,
                         synthetic_ino(self._source, rel), None)

    def check(self) -> None:
        if not self.root.exists():
            raise NotFound(f"{self._source}: directory does not exist")
        if not self.root.is_dir():
            raise NotADirectory(f"{self._source}: not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise PermissionDenied(f"{self._source}: not readable")

    def stat(self, rel: str) -> EntryStat | None:
        path = self._path(rel)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise _translate(e, f"stat {rel or '/'}") from e
        return self._entry(rel, st)

    def list_dir(self, rel: str) -> list[tuple[str, EntryStat]]:
        out: list[tuple[str, EntryStat]] = []
        with _host(f"list {rel or '/'}"), os.scandir(self._path(rel)) as it:
            for d in it:
                try:
                    st = d.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while listing
                entry = self._entry(join_rel(rel, d.name), st)
                if entry is not None:
                    out.append((d.name, entry))
        out.sort(key=lambda pair: pair[0])
        return out

    def open_reader(self, rel: str, expect: EntryStat | None = None) -> Reader:
        with _host(f"open {rel}"):
            fd = os.open(self._path(rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        return _FdReader(fd)

    def readlink(self, rel: str) -> str:
        with _host(f"readlink {rel}"):
            return os.readlink(self._path(rel))

    def fingerprint(self, rel: str) -> str | None:
        """dev:ino:size:mtime_ns:ctime_ns — any rewrite of the file changes it."""
        try:
            st = os.lstat(self._path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise _translate(e, f"stat {rel}") from e
        return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"

    # ---- write-back ----------------------------------------------------------

    def put_file(self, rel: str, local_path: Path, mode: int, mtime_ns: int) -> str | None:
        target = self._path(rel)
        tmp = target.with_name(f".{target.name}.astrid-put-{os.getpid()}-{threading.get_ident()}")
        with _host(f"write {rel}"):
            try:
                with open(local_path, "rb") as src, open(tmp, "xb") as dst:
                    shutil.copyfileobj(src, dst, _COPY_CHUNK)
                    dst.flush()
                    os.fchmod(dst.fileno(), stat.S_IMODE(mode))
                    os.fsync(dst.fileno())
                os.utime(tmp, ns=(mtime_ns, mtime_ns))
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._fsync_dir(target.parent)
        return self.fingerprint(rel)

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def make_dir(self, rel: str, mode: int) -> None:
        path = self._path(rel)
        with _host(f"mkdir {rel}"):
            try:
                os.mkdir(path, stat.S_IMODE(mode))
            except FileExistsError:
                if not path.is_dir() or path.is_symlink():
                    raise
                return
            self._fsync_dir(path.parent)

    def make_symlink(self, rel: str, target: str) -> None:
        with _host(f"symlink {rel}"):
            os.symlink(target, self._path(rel))

    def set_attrs(self, rel: str, mode: int | None, mtime_ns: int | None) -> None:
        path = self._path(rel)
        with _host(f"set attributes of {rel}"):
            if mode is not None and not path.is_symlink():
                os.chmod(path, stat.S_IMODE(mode))
            if mtime_ns is not None:
                st = os.lstat(path)
                os.utime(path, ns=(st.st_atime_ns, mtime_ns), follow_symlinks=False)

    def delete(self, rel: str) -> None:
        with _host(f"delete {rel}"):
            remove_entry(self._path(rel), tree=False)

    def delete_tree(self, rel: str) -> None:
        if rel == "":
            raise InvalidPath(f"{self._source}: refusing to delete the whole source")
        with _host(f"delete {rel}"):
            remove_entry(self._path(rel), tree=True)

    def rename(self, old: str, new: str) -> None:
        with _host(f"rename {old} to {new}"):
            os.rename(self._path(old), self._path(new))

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"LocalDriver({self._source!r})"


_OPTIONS: tuple[str, ...] = ()


def validate(source: str, options: Options) -> None:
    """`local` takes no options; the source must name a path."""
    for key in options:
        raise ConfigError(f"local driver has no option {key!r}")
    path_from_source(source)


def open_local(source: str, options: Options) -> LocalDriver:
    validate(source, options)
    return LocalDriver(path_from_source(source), source)


SPEC = DriverSpec(
    name="local",
    schemes=("file", ""),
    summary="a host directory (file:///path or a plain path)",
    open=open_local,
    validate=validate,
    option_names=_OPTIONS,
)
