"""The VFS a plugin sees: granted roots, per-plugin handle tables, paths
resolved strictly beneath a directory fd.

What it knows: a plugin's `vfs` grant names roots (`workspace`,
`workspace:ro`, later `/mnt/s3`); the kernel maps root names to host
directories (for `workspace`, the session's FUSE mount point, so every
write lands in the session's upper layer). A handle is a small integer
(`rep`) in one plugin's `HandleTable`, backed by an fd; the ABI layer
(`abi/vfs.py`) wraps reps in component resources, which a guest cannot
forge, and closes them when the guest drops them or the instance dies.

Resolution: a plugin path is checked syntactically first (relative, no
`..`, no empty or over-long components, no NUL) and then opened with
`openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` beneath the handle's
directory fd, so a symlink that points out (absolute, or climbing with
`..`) and `/proc` magic links fail in the kernel's own walk, with no
check-then-use race. Symlinks that stay beneath the handle are followed.
Operations on a final name (mkdir, remove, rename, stat) resolve the
parent directory that way and then act on one plain name with the
`*at` calls, never following a final symlink.

What it does not know: wasmtime, trio, the bus. Every failure is a
`Refusal(kind, message)` whose kind is an `astrid:kernel/types.error` case.
Methods block (filesystem calls); the ABI calls them from the plugin's
guest thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as statmod
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from astrid_runtime.errors import Refusal
from astrid_runtime.openat2 import RESOLVE_STRICT, openat2

#: The longest path a plugin may name, and the longest single component (Linux's limits).
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
READ_ONLY_SUFFIX = ":ro"

#: (event, fields) -> None: where refusals are recorded (approval.audit.AuditLog.record).
AuditSink = Callable[[str, dict[str, object]], None]

_KIND_BY_FMT = {statmod.S_IFREG: "file", statmod.S_IFDIR: "directory",
                statmod.S_IFLNK: "symlink"}


@dataclass(frozen=True)
class VfsLimits:
    """Per-plugin VFS limits (documented in docs/abi.md)."""

    #: Open `dir` + `file` handles at once.
    max_handles: int = 64
    #: Largest `read(len)` and `write(data)` in one call; read a big file in chunks.
    max_io_bytes: int = 1024 * 1024
    #: Entries one `list` returns.
    max_list_entries: int = 10_000


@dataclass(frozen=True)
class RootGrant:
    """One entry of a plugin's `vfs` grant: a root name, read-only or read-write."""

    name: str
    writable: bool

    @classmethod
    def parse(cls, text: str) -> RootGrant:
        """`workspace` (read-write) or `workspace:ro` (read-only)."""
        if text.endswith(READ_ONLY_SUFFIX):
            return cls(text.removesuffix(READ_ONLY_SUFFIX), False)
        return cls(text, True)


def root_grants(entries: Iterable[str]) -> dict[str, RootGrant]:
    """The plugin's `vfs` grant as root name -> grant; read-write wins over read-only."""
    out: dict[str, RootGrant] = {}
    for entry in entries:
        grant = RootGrant.parse(entry)
        if grant.name not in out or grant.writable:
            out[grant.name] = grant
    return out


@dataclass(frozen=True)
class EntryStat:
    kind: str
    size: int
    mtime_ns: int
    mode: int


def entry_kind(mode: int) -> str:
    return _KIND_BY_FMT.get(statmod.S_IFMT(mode), "other")


def _stat_of(st: os.stat_result) -> EntryStat:
    return EntryStat(entry_kind(st.st_mode), st.st_size, max(st.st_mtime_ns, 0),
                     statmod.S_IMODE(st.st_mode))


def check_path(path: str, *, allow_empty: bool = True) -> list[str]:
    """The components of a plugin path, or `Refusal('invalid')`.

    Empty and `.` components are dropped ("" and "." name the handle's own
    directory when `allow_empty`); `..`, absolute paths, NUL bytes and
    over-long paths or names are refused before any syscall.
    """
    if "\0" in path:
        raise Refusal("invalid", "path contains a NUL byte")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise Refusal("invalid", f"path longer than {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        raise Refusal("invalid", f"absolute path {path[:80]!r}: paths are relative to a handle")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for part in parts:
        if part == "..":
            raise Refusal("invalid", f"'..' in path {path[:80]!r}: paths cannot climb out")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise Refusal("invalid", f"path component longer than {MAX_NAME_BYTES} bytes")
    if not parts and not allow_empty:
        raise Refusal("invalid", "empty path: name an entry beneath the handle")
    return parts


def refusal_for(e: OSError, what: str) -> Refusal:
    """An `OSError` from resolution or I/O as the ABI error a plugin can act on."""
    code = e.errno
    if code == errno.EXDEV:
        return Refusal("denied", f"{what}: escapes its root (absolute or outward symlink)")
    if code == errno.ELOOP:
        return Refusal("denied", f"{what}: refused link (magic link, symlink loop, or a "
                       "symlink as the final name)")
    if code == errno.ENOENT:
        return Refusal("not-found", f"{what}: no such file or directory")
    if code in (errno.EEXIST, errno.ENOTEMPTY):
        return Refusal("conflict", f"{what}: {os.strerror(code).lower()}")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Refusal("denied", f"{what}: {os.strerror(code).lower()}")
    if code in (errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EINVAL):
        return Refusal("invalid", f"{what}: {os.strerror(code).lower()}")
    if code in (errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return Refusal("too-large", f"{what}: {os.strerror(code).lower()}")
    return Refusal("io", f"{what}: {os.strerror(code or errno.EIO).lower()}")


@dataclass
class DirHandle:
    fd: int
    root: RootGrant
    path: str

    def label(self, rel: str) -> str:
        joined = f"{self.path}/{rel}" if self.path and rel else (self.path or rel)
        return f"{self.root.name}:{joined or '.'}"


@dataclass
class FileHandle:
    fd: int
    root: RootGrant
    path: str
    readable: bool
    writable: bool


Handle = DirHandle | FileHandle


@dataclass
class HandleTable:
    """One plugin's open handles: rep -> handle. Thread-safe; reps are never reused.

    A rep below `next_rep` that is not in the table was closed (`closed`);
    one at or above it never existed (`not-found`).
    """

    limit: int
    handles: dict[int, Handle] = field(default_factory=dict)
    next_rep: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def insert(self, handle: Handle) -> int:
        with self._lock:
            if len(self.handles) >= self.limit:
                os.close(handle.fd)
                raise Refusal("too-large", f"more than {self.limit} open vfs handles; "
                              "drop some first")
            rep = self.next_rep
            self.next_rep += 1
            self.handles[rep] = handle
            return rep

    def get(self, rep: int) -> Handle:
        with self._lock:
            handle = self.handles.get(rep)
            if handle is None:
                if 0 < rep < self.next_rep:
                    raise Refusal("closed", f"handle {rep} was closed")
                raise Refusal("not-found", f"no handle {rep}")
            return handle

    def close(self, rep: int) -> bool:
        """Close one handle; False if it was not open. Never raises."""
        with self._lock:
            handle = self.handles.pop(rep, None)
        if handle is None:
            return False
        _close_quietly(handle.fd)
        return True

    def close_all(self) -> int:
        """Close every handle (the instance died or the plugin stopped); how many."""
        with self._lock:
            handles = list(self.handles.values())
            self.handles.clear()
        for handle in handles:
            _close_quietly(handle.fd)
        return len(handles)

    def __len__(self) -> int:
        return len(self.handles)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


#: Error kinds that are audit lines: attempts beyond the grant, hostile or broken input.
AUDITED = frozenset({"denied", "invalid", "closed", "too-large"})

OPEN_FLAGS = frozenset({"read", "write", "create", "truncate", "append", "exclusive"})


class PluginVfs:
    """The VFS of one plugin: its granted roots and its handle table.

    `roots` maps root names the kernel provides to host directories; the
    plugin's `grant` (its `vfs` entries) says which of them it may open and
    how. Every public method returns plain values or raises `Refusal`.
    """

    def __init__(self, plugin: str, grant: Iterable[str], roots: Mapping[str, Path],
                 limits: VfsLimits | None = None, audit: AuditSink | None = None):
        self.plugin = plugin
        self.audit = audit
        self.grants = root_grants(grant)
        self.roots = dict(roots)
        self.limits = limits or VfsLimits()
        self.table = HandleTable(self.limits.max_handles)

    # -- handles ---------------------------------------------------------------

    def _dir(self, rep: int) -> DirHandle:
        handle = self.table.get(rep)
        if not isinstance(handle, DirHandle):
            raise Refusal("invalid", f"handle {rep} is a file, not a directory")
        return handle

    def _file(self, rep: int) -> FileHandle:
        handle = self.table.get(rep)
        if not isinstance(handle, FileHandle):
            raise Refusal("invalid", f"handle {rep} is a directory, not a file")
        return handle

    def refused(self, op: str, detail: str, kind: str, reason: str) -> None:
        """Record a refused call in the audit trail (the guest got an error value).

        Only refusals a person should see are recorded (`AUDITED`): a
        `not-found` or `conflict` is an ordinary answer, not an attempt.
        """
        if self.audit is not None and kind in AUDITED:
            self.audit("vfs.refused", {"plugin": self.plugin, "op": op, "arg": detail[:200],
                                       "error": kind, "reason": reason})

    def drop(self, rep: int) -> None:
        """The guest dropped the resource. Never raises."""
        self.table.close(rep)

    def close_all(self) -> int:
        return self.table.close_all()

    @staticmethod
    def _writable(d: DirHandle, what: str) -> None:
        if not d.root.writable:
            raise Refusal("denied", f"{what}: root {d.root.name!r} is granted read-only")

    # -- resolution --------------------------------------------------------------

    def _open_beneath(self, d: DirHandle, parts: list[str], flags: int, mode: int = 0) -> int:
        rel = "/".join(parts) or "."
        try:
            return openat2(d.fd, rel, flags, mode, RESOLVE_STRICT)
        except OSError as e:
            raise refusal_for(e, d.label(rel)) from None

    def _parent(self, d: DirHandle, path: str) -> tuple[int, str, str]:
        """(parent fd — caller closes it, final name, label) for an op on one name."""
        parts = check_path(path, allow_empty=False)
        fd = self._open_beneath(d, parts[:-1], os.O_PATH | os.O_DIRECTORY)
        return fd, parts[-1], d.label("/".join(parts))

    # -- the `vfs` interface -------------------------------------------------------

    def root(self, name: str) -> int:
        """Open a granted root as a `dir` handle (its rep)."""
        grant = self.grants.get(name)
        if grant is None:
            raise Refusal("denied", f"vfs root {name!r} not granted")
        host = self.roots.get(name)
        if host is None:
            raise Refusal("unavailable", f"vfs root {name!r} is not provided by this kernel "
                          "(no session mounted?)")
        try:
            fd = os.open(host, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise Refusal("unavailable", f"vfs root {name!r}: {e.strerror}") from None
        return self.table.insert(DirHandle(fd, grant, ""))

    def open_dir(self, rep: int, path: str) -> int:
        d = self._dir(rep)
        parts = check_path(path)
        fd = self._open_beneath(d, parts, os.O_PATH | os.O_DIRECTORY)
        rel = "/".join(parts)
        sub = f"{d.path}/{rel}" if d.path and rel else (d.path or rel)
        return self.table.insert(DirHandle(fd, d.root, sub))

    def open_file(self, rep: int, path: str, flags: Iterable[str]) -> int:
        d = self._dir(rep)
        want = set(flags)
        unknown = want - OPEN_FLAGS
        if unknown:
            raise Refusal("invalid", f"unknown open flags {sorted(unknown)}")
        parts = check_path(path, allow_empty=False)
        label = d.label("/".join(parts))
        writes = bool(want & {"write", "create", "truncate", "append", "exclusive"})
        if writes:
            self._writable(d, label)
        readable = "read" in want or not writes
        writable = bool(want & {"write", "append"})
        if want & {"truncate"} and not writable:
            raise Refusal("invalid", f"{label}: truncate needs write or append")
        if "exclusive" in want and "create" not in want:
            raise Refusal("invalid", f"{label}: exclusive needs create")
        oflags = (os.O_RDWR if readable and writable else os.O_WRONLY if writable
                  else os.O_RDONLY) | os.O_NOCTTY
        oflags |= os.O_TRUNC if "truncate" in want else 0
        oflags |= os.O_APPEND if "append" in want else 0
        fd = self._open_regular(d, parts, label, oflags, want)
        return self.table.insert(FileHandle(fd, d.root, "/".join(parts), readable, writable))

    def _open_regular(self, d: DirHandle, parts: list[str], label: str, oflags: int,
                      want: set[str]) -> int:
        """An fd for a regular file beneath `d`, never opening anything else.

        The name is first resolved to an `O_PATH` fd (which opens nothing:
        no FIFO blocks, no device driver runs), checked to be a regular
        file, and only then opened for I/O through `/proc/self/fd` -- the
        same inode, with no second path walk. A missing name with `create`
        is made with `O_CREAT | O_EXCL`, so it is a new regular file.
        """
        try:
            probe = self._open_beneath(d, parts, os.O_PATH)
        except Refusal as e:
            if e.kind != "not-found" or "create" not in want:
                raise
            return self._open_beneath(d, parts, oflags | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if "exclusive" in want:
                raise Refusal("conflict", f"{label}: exists (exclusive create)")
            kind = entry_kind(os.fstat(probe).st_mode)
            if kind != "file":
                raise Refusal("invalid", f"{label}: not a regular file ({kind})")
            try:
                return os.open(f"/proc/self/fd/{probe}", oflags | os.O_CLOEXEC)
            except OSError as e:
                raise refusal_for(e, label) from None
        finally:
            os.close(probe)

    def list(self, rep: int, path: str) -> list[tuple[str, str]]:
        d = self._dir(rep)
        parts = check_path(path)
        fd = self._open_beneath(d, parts, os.O_RDONLY | os.O_DIRECTORY)
        out: list[tuple[str, str]] = []
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if len(out) >= self.limits.max_list_entries:
                        raise Refusal("too-large", f"{d.label('/'.join(parts))}: more than "
                                      f"{self.limits.max_list_entries} entries")
                    out.append((entry.name, _scandir_kind(entry)))
        except OSError as e:
            raise refusal_for(e, d.label("/".join(parts))) from None
        finally:
            os.close(fd)
        return sorted(out)

    def stat(self, rep: int, path: str) -> EntryStat:
        d = self._dir(rep)
        parts = check_path(path)
        if not parts:
            return _stat_of(os.fstat(d.fd))
        fd, name, label = self._parent(d, path)
        try:
            return _stat_of(os.stat(name, dir_fd=fd, follow_symlinks=False))
        except OSError as e:
            raise refusal_for(e, label) from None
        finally:
            os.close(fd)

    def mkdir(self, rep: int, path: str) -> None:
        d = self._dir(rep)
        self._writable(d, d.label(path))
        fd, name, label = self._parent(d, path)
        try:
            os.mkdir(name, 0o755, dir_fd=fd)
        except OSError as e:
            raise refusal_for(e, label) from None
        finally:
            os.close(fd)

    def remove(self, rep: int, path: str) -> None:
        """Remove a file, symlink or empty directory (never what a symlink points to)."""
        d = self._dir(rep)
        self._writable(d, d.label(path))
        fd, name, label = self._parent(d, path)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if statmod.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
        except OSError as e:
            raise refusal_for(e, label) from None
        finally:
            os.close(fd)

    def rename(self, rep: int, src: str, dst: str) -> None:
        d = self._dir(rep)
        self._writable(d, d.label(src))
        sfd, sname, slabel = self._parent(d, src)
        try:
            dfd, dname, _ = self._parent(d, dst)
            try:
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            except OSError as e:
                raise refusal_for(e, f"{slabel} -> {dst[:80]}") from None
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    # -- the `file` resource ------------------------------------------------------

    def read(self, rep: int, length: int) -> bytes:
        f = self._file(rep)
        if not f.readable:
            raise Refusal("denied", f"{f.root.name}:{f.path}: opened without read")
        if length > self.limits.max_io_bytes:
            raise Refusal("too-large", f"read of {length} bytes over the limit of "
                          f"{self.limits.max_io_bytes}; read in chunks")
        try:
            return os.read(f.fd, length)
        except OSError as e:
            raise refusal_for(e, f"{f.root.name}:{f.path}") from None

    def write(self, rep: int, data: bytes) -> int:
        f = self._file(rep)
        if not f.writable:
            raise Refusal("denied", f"{f.root.name}:{f.path}: opened without write")
        if len(data) > self.limits.max_io_bytes:
            raise Refusal("too-large", f"write of {len(data)} bytes over the limit of "
                          f"{self.limits.max_io_bytes}; write in chunks")
        try:
            return os.write(f.fd, data)
        except OSError as e:
            raise refusal_for(e, f"{f.root.name}:{f.path}") from None

    def seek(self, rep: int, offset: int, whence: str) -> int:
        f = self._file(rep)
        how = {"start": os.SEEK_SET, "current": os.SEEK_CUR, "end": os.SEEK_END}.get(whence)
        if how is None:
            raise Refusal("invalid", f"unknown seek origin {whence!r}")
        try:
            return os.lseek(f.fd, offset, how)
        except OSError as e:
            raise refusal_for(e, f"{f.root.name}:{f.path}") from None

    def fstat(self, rep: int) -> EntryStat:
        f = self._file(rep)
        return _stat_of(os.fstat(f.fd))


def _scandir_kind(entry: os.DirEntry[str]) -> str:
    try:
        if entry.is_symlink():
            return "symlink"
        if entry.is_dir(follow_symlinks=False):
            return "directory"
        if entry.is_file(follow_symlinks=False):
            return "file"
    except OSError:
        pass
    return "other"


__all__ = ["DirHandle", "EntryStat", "FileHandle", "HandleTable", "PluginVfs", "RootGrant",
           "VfsLimits", "check_path", "refusal_for", "root_grants"]
