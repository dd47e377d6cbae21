"""The VFS's rules that need no file: what a plugin may name (paths, root
grants), its limits, and how an `OSError` reads as the ABI error a plugin can
act on. vfs.py applies them; tests drive them alone.
"""

from __future__ import annotations

import errno
import os
import stat as statmod
from collections.abc import Iterable
from dataclasses import dataclass

from astrid_runtime.errors import Refusal

#: The longest path a plugin may name, and the longest single component (Linux's limits).
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
READ_ONLY_SUFFIX = ":ro"

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


def stat_of(st: os.stat_result) -> EntryStat:
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
