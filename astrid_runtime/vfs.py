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
guest thread. The rules that need no file are in vfs_rules.py, the handle
table in vfs_handles.py.
"""

from __future__ import annotations

import os
import stat as statmod
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from astrid_runtime.errors import Refusal
from astrid_runtime.openat2 import RESOLVE_STRICT, openat2
from astrid_runtime.vfs_handles import DirHandle as DirHandle
from astrid_runtime.vfs_handles import FileHandle as FileHandle
from astrid_runtime.vfs_handles import HandleTable as HandleTable
from astrid_runtime.vfs_rules import EntryStat as EntryStat
from astrid_runtime.vfs_rules import RootGrant as RootGrant
from astrid_runtime.vfs_rules import VfsLimits as VfsLimits
from astrid_runtime.vfs_rules import check_path as check_path
from astrid_runtime.vfs_rules import entry_kind, stat_of
from astrid_runtime.vfs_rules import refusal_for as refusal_for
from astrid_runtime.vfs_rules import root_grants as root_grants

#: (event, fields) -> None: where refusals are recorded (approval.audit.AuditLog.record).
AuditSink = Callable[[str, dict[str, object]], None]

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
            return stat_of(os.fstat(d.fd))
        fd, name, label = self._parent(d, path)
        try:
            return stat_of(os.stat(name, dir_fd=fd, follow_symlinks=False))
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
        return stat_of(os.fstat(f.fd))


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
