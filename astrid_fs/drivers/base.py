"""The driver interface: a read-only tree, plus the write-back calls commit needs.

A driver serves one source (a host directory, an S3 prefix, ...) as a tree
of relative paths. It never sees the session's upper layer: the overlay
reads through it, and only `astrid-fs commit` calls its write-back half.

Paths are `str`, relative to the source root, '/'-separated, with no leading
or trailing '/', no '.', '..' or empty components; `""` is the root.
`check_rel` enforces that. Names that are not valid UTF-8 on a host
filesystem travel as `os.fsdecode` strings (surrogate escapes) and round-trip.

Threading: every method may be called from several worker threads at once
(the FUSE adapter runs them via `trio.to_thread`); a driver must be
thread-safe and must never block without a timeout. Failures are
`astrid_fs.drivers.errors.DriverError`s carrying an errno; temporary ones are
retried in one place (`astrid_fs.drivers.retry`), not by each call site.

What a driver promises:
- `stat`/`list_dir` describe one moment of the source; no caching inside
  the driver (caching is a wrapper: `astrid_fs.drivers.cache`).
- `fingerprint` is fresh (never cached): commit compares it with the
  fingerprint the session saw to detect conflicts (S3: the ETag).
- `put_file` is atomic: readers see the old or the new content, never a
  torn file (local: temp + fsync + rename; S3: one PUT or a completed
  multipart upload).
- `ino` values are synthetic and stable for a path across processes
  (`synthetic_ino`), below 2**48, so the overlay can tag them.
"""

from __future__ import annotations

import hashlib
import stat as _stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from astrid_fs.drivers.errors import InvalidPath

Kind = Literal["file", "dir", "symlink"]
OptionValue = str | int | float | bool
Options = Mapping[str, OptionValue]

INO_BITS = 48
_KIND_BITS = {"file": _stat.S_IFREG, "dir": _stat.S_IFDIR, "symlink": _stat.S_IFLNK}


@dataclass(frozen=True)
class EntryStat:
    """What a driver knows about one entry, from one stat or one listing.

    `mode` is a full `st_mode` (type bits included); `mtime_ns` is the
    source's modification time (S3: the object's Last-Modified); `etag` is
    the source's change token when the listing carries one (S3 ETag), else
    None.
    """

    kind: Kind
    size: int
    mtime_ns: int
    mode: int
    ino: int
    etag: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


@dataclass(frozen=True)
class Capabilities:
    """What the source can represent; commit skips or refuses the rest.

    `symlinks`: `make_symlink`/`readlink` work. `modes`: `set_attrs` keeps
    permission bits and mtimes. `empty_dirs`: a directory exists without
    entries (S3: a prefix exists only while something is under it).
    `atomic_rename`: `rename` is one atomic step (S3: copy + delete).
    """

    symlinks: bool
    modes: bool
    empty_dirs: bool
    atomic_rename: bool


@runtime_checkable
class Reader(Protocol):
    """An open file. `pread` may be called from several threads at once."""

    def pread(self, size: int, offset: int) -> bytes | memoryview:
        """Up to `size` bytes at `offset`; fewer only at end of file. A
        memoryview is read-only and stays valid (it holds its buffer)."""
        ...

    def close(self) -> None:
        """Release the reader; idempotent."""
        ...


@runtime_checkable
class TryReader(Protocol):
    """A reader that can answer from what it already holds, without I/O."""

    def try_pread(self, size: int, offset: int) -> bytes | memoryview | None:
        """What `pread` would return, if that needs no I/O and no wait; else None."""
        ...


TryPread = Callable[[int, int], bytes | memoryview | None]


def try_pread_of(reader: object) -> TryPread | None:
    """`reader.try_pread` when it has one (a `TryReader`), else None. An
    attribute lookup, not `isinstance` against the runtime-checkable
    Protocol, which walks the protocol's members every time: two such checks
    were ~75 us of a remote file's first READ, on the FUSE thread and in the
    worker before the GET (profiled 2026-12-03)."""
    fn = getattr(reader, "try_pread", None)
    return fn if callable(fn) else None


@runtime_checkable
class LowerDriver(Protocol):
    """One source as a tree: reads for the overlay, write-back for commit."""

    @property
    def source(self) -> str:
        """The source URL, as given (credentials never appear in it)."""
        ...

    @property
    def is_remote(self) -> bool:
        """True if calls cross a network (the overlay then caches and uses threads)."""
        ...

    @property
    def local_root(self) -> Path | None:
        """A host directory the overlay may use with direct os calls, or None."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    def check(self) -> None:
        """Fail fast, with one line, if the source is unusable (called before mounting)."""
        ...

    def stat(self, rel: str) -> EntryStat | None:
        """The entry at `rel`, or None if there is none."""
        ...

    def list_dir(self, rel: str) -> list[tuple[str, EntryStat]]:
        """(name, stat) of every entry in directory `rel`, sorted by name."""
        ...

    def open_reader(self, rel: str, expect: EntryStat | None = None) -> Reader:
        """Open file `rel` for reading. `expect` (from an earlier stat or
        listing) spares a round trip; a reader whose object changed under it
        raises `Stale`."""
        ...

    def readlink(self, rel: str) -> str:
        """The target of symlink `rel`."""
        ...

    def fingerprint(self, rel: str) -> str | None:
        """A fresh change token for `rel` (S3: ETag), None if it does not exist."""
        ...

    # ---- write-back (commit only) ------------------------------------------

    def put_file(self, rel: str, local_path: Path, mode: int, mtime_ns: int) -> str | None:
        """Atomically make `rel` a copy of `local_path`; return its new fingerprint."""
        ...

    def make_dir(self, rel: str, mode: int) -> None:
        """Create directory `rel` (no error if it exists)."""
        ...

    def make_symlink(self, rel: str, target: str) -> None:
        """Create symlink `rel` -> `target` (NotSupported where sources have none)."""
        ...

    def set_attrs(self, rel: str, mode: int | None, mtime_ns: int | None) -> None:
        """Set permission bits and/or mtime (NotSupported without `capabilities.modes`)."""
        ...

    def delete(self, rel: str) -> None:
        """Remove file or symlink `rel`, or empty directory `rel`; absent is no error."""
        ...

    def delete_tree(self, rel: str) -> None:
        """Remove `rel` and everything under it; absent is no error."""
        ...

    def rename(self, old: str, new: str) -> None:
        """Move `old` (file or directory) to `new`, replacing a file at `new`."""
        ...

    def close(self) -> None:
        """Release connections and threads; idempotent."""
        ...


@dataclass(frozen=True)
class DriverSpec:
    """What a driver package registers under the `astrid_fs.drivers` entry-point group.

    `open(source, options)` builds a driver without touching the network;
    `validate(source, options)` raises `ConfigError` naming the bad option;
    `option_names` lists the options it accepts (for `astrid-fs drivers`).
    """

    name: str
    schemes: tuple[str, ...]
    summary: str
    open: Callable[[str, Options], LowerDriver]
    validate: Callable[[str, Options], None]
    option_names: tuple[str, ...] = field(default=())


def check_rel(rel: str) -> str:
    """Return `rel` if it is a well-formed relative path, else raise InvalidPath."""
    if rel == "":
        return rel
    if rel.startswith("/") or rel.endswith("/") or "\0" in rel:
        raise InvalidPath(f"invalid relative path {rel!r}")
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            raise InvalidPath(f"invalid relative path {rel!r}")
    return rel


def join_rel(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def parent_rel(rel: str) -> str:
    return rel.rpartition("/")[0]


def synthetic_ino(source: str, rel: str) -> int:
    """A stable inode number for `rel` in `source`: a hash, in [2, 2**48)."""
    digest = hashlib.blake2b(f"{source}\0{rel}".encode("utf-8", "surrogateescape"),
                             digest_size=8).digest()
    value = int.from_bytes(digest, "big") & ((1 << INO_BITS) - 1)
    return value if value > 1 else value + 2


def mode_for(kind: Kind, perm: int) -> int:
    """A full st_mode for an entry of `kind` with permission bits `perm`."""
    return _KIND_BITS[kind] | (perm & 0o7777)


class DelegatingDriver:
    """Forwards every call to `inner`; wrappers (cache, read-only) override a few."""

    def __init__(self, inner: LowerDriver) -> None:
        self.inner = inner

    @property
    def source(self) -> str:
        return self.inner.source

    @property
    def is_remote(self) -> bool:
        return self.inner.is_remote

    @property
    def local_root(self) -> Path | None:
        return self.inner.local_root

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def check(self) -> None:
        self.inner.check()

    def stat(self, rel: str) -> EntryStat | None:
        return self.inner.stat(rel)

    def list_dir(self, rel: str) -> list[tuple[str, EntryStat]]:
        return self.inner.list_dir(rel)

    def open_reader(self, rel: str, expect: EntryStat | None = None) -> Reader:
        return self.inner.open_reader(rel, expect)

    def readlink(self, rel: str) -> str:
        return self.inner.readlink(rel)

    def fingerprint(self, rel: str) -> str | None:
        return self.inner.fingerprint(rel)

    def put_file(self, rel: str, local_path: Path, mode: int, mtime_ns: int) -> str | None:
        return self.inner.put_file(rel, local_path, mode, mtime_ns)

    def make_dir(self, rel: str, mode: int) -> None:
        self.inner.make_dir(rel, mode)

    def make_symlink(self, rel: str, target: str) -> None:
        self.inner.make_symlink(rel, target)

    def set_attrs(self, rel: str, mode: int | None, mtime_ns: int | None) -> None:
        self.inner.set_attrs(rel, mode, mtime_ns)

    def delete(self, rel: str) -> None:
        self.inner.delete(rel)

    def delete_tree(self, rel: str) -> None:
        self.inner.delete_tree(rel)

    def rename(self, old: str, new: str) -> None:
        self.inner.rename(old, new)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"
