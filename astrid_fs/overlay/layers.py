"""Layer resolution: what one name in a merged directory is, and what a
merged directory lists. Plain functions over the two layer roots; no FUSE.

Rules (overlayfs's):
- An upper entry hides the lower one of the same name; an upper whiteout
  hides it and shows nothing.
- An upper directory merges with the lower directory of the same name
  unless it is opaque; a redirect names the lower directory it merges with
  instead (a renamed lower directory).
- A lower entry shows only where the parent merges with a lower directory.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Protocol

from astrid_fs.overlay.longpaths import LONG_PATH, LongPaths
from astrid_fs.overlay.stack import LowerStack
from astrid_fs.overlay.whiteout import Origin, OverlayXattrs, get_xattr, is_whiteout_stat


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


class StatLike(Protocol):
    """What the overlay reads of a stat result (os.stat_result has it all)."""

    @property
    def st_mode(self) -> int: ...
    @property
    def st_ino(self) -> int: ...
    @property
    def st_dev(self) -> int: ...
    @property
    def st_nlink(self) -> int: ...
    @property
    def st_uid(self) -> int: ...
    @property
    def st_gid(self) -> int: ...
    @property
    def st_rdev(self) -> int: ...
    @property
    def st_size(self) -> int: ...
    @property
    def st_blksize(self) -> int: ...
    @property
    def st_blocks(self) -> int: ...
    @property
    def st_atime_ns(self) -> int: ...
    @property
    def st_mtime_ns(self) -> int: ...
    @property
    def st_ctime_ns(self) -> int: ...


@dataclass(frozen=True)
class SyntheticStat:
    """A stat result for entries that have no local inode (remote trees,
    the directories above a remote mount point)."""

    st_mode: int
    st_ino: int
    st_dev: int
    st_size: int = 0
    st_mtime_ns: int = 0
    st_nlink: int = 1
    st_uid: int = 0
    st_gid: int = 0
    st_rdev: int = 0
    st_blksize: int = 1 << 20

    @property
    def st_blocks(self) -> int:
        return (self.st_size + 511) // 512

    @property
    def st_atime_ns(self) -> int:
        return self.st_mtime_ns

    @property
    def st_ctime_ns(self) -> int:
        return self.st_mtime_ns


def synthetic_ino(rel: bytes) -> int:
    """A stable inode number for a path without a local inode (< 2**48)."""
    return int.from_bytes(hashlib.blake2b(rel, digest_size=6).digest(), "big") | 1


class Reader(Protocol):
    """An open remote file: positional reads, safe to call from a worker thread;
    `try_pread` answers without I/O (from its cache) or says None, so the
    FUSE thread may call it."""

    def pread(self, size: int, offset: int) -> bytes | memoryview: ...
    def try_pread(self, size: int, offset: int) -> bytes | memoryview | None: ...
    def close(self) -> None: ...


class RemoteTree(Protocol):
    """A non-local lower tree mounted at a virtual path (the lower driver seam).

    Wiring a driver in: build an object with this shape over it (e.g. in
    `astrid_fs/overlay/remote.py`), and pass `Layers(..., remotes=((b"mnt/s3",
    tree),))` when the daemon builds its overlay (`daemon.Daemon.__init__`,
    from a mount table in `DaemonConfig`). Everything else is already
    routed: lookups, listings and stats use it (warmed in worker threads by
    `FuseOps._warm*`); read-only opens get a `Reader` handle (reads in
    worker threads); any write copies up through `copyup.copy_up_remote`,
    whose origin records `fingerprint` (ETag) for commit's conflict check.
    `dev` must be unique per tree (it tags the tree's inode numbers).

    Paths are relative to the tree's root, as bytes. `stat`, `names` and
    `readlink` are called from the FUSE thread and must only use cached
    metadata: the adapter calls `warm` in a worker thread first whenever
    `is_warm` says the metadata (a directory's: its listing; with
    `data=True`, the whole content, for copy-up) is not cached. A LOOKUP
    needs less, only the entry's own stat: `is_known` / `warm_lookup` (which
    may list the parent instead, when that is cheaper for what follows).
    `open_reader` readers are used from worker threads. `fetch_to` writes
    the whole content into a local fd (copy-up; called after `warm(rel,
    data=True)`).
    """

    dev: int

    def invalidate(self) -> None: ...
    def is_warm(self, rel: bytes, data: bool = False) -> bool: ...
    def warm(self, rel: bytes, data: bool = False) -> None: ...
    def is_known(self, rel: bytes) -> bool: ...
    def warm_lookup(self, rel: bytes) -> None: ...
    def stat(self, rel: bytes) -> StatLike | None: ...
    def names(self, rel: bytes) -> list[bytes]: ...
    def readlink(self, rel: bytes) -> bytes: ...
    def open_reader(self, rel: bytes) -> Reader: ...
    def fetch_to(self, rel: bytes, fd: int) -> None: ...
    def fingerprint(self, rel: bytes) -> str | None: ...


# `astrid-fs commit` stages in LOWER/.astrid-commit-TXID (see commit.py):
# never part of the merged view.
COMMIT_STAGING_PREFIX = b".astrid-commit-"

@dataclass(frozen=True)
class Layers:
    """The layer roots (absolute, bytes), the overlay xattr names, and the
    remote trees mounted into the lower layer at virtual paths.

    `remotes` holds (virtual path relative to the lower root, tree), longest
    path first, so the first match is the longest prefix. The directories
    above a mount point show as directories even where the local lower has
    none.
    """

    lower: bytes
    upper: bytes
    names: OverlayXattrs
    remotes: tuple[tuple[bytes, RemoteTree], ...] = ()
    long_paths: LongPaths = field(default_factory=LongPaths, compare=False)
    # Further lower layers beneath `lower` (lowerdir=A:B): then `stack`
    # resolves the local lower tree across all of them (A = `lower` on top).
    stack: LowerStack | None = None

    def upper_path(self, rel: bytes) -> bytes:
        if not rel:
            return self.upper
        path = self.upper + b"/" + rel
        return path if len(path) < LONG_PATH else self.long_paths.shorten(path)

    def lower_path(self, rel: bytes) -> bytes:
        """The local path of a lower entry (callers check `remote_for` first)."""
        if self.stack is not None:
            return self.stack.path(rel)
        if not rel:
            return self.lower
        path = self.lower + b"/" + rel
        return path if len(path) < LONG_PATH else self.long_paths.shorten(path)

    def remote_for(self, rel: bytes) -> tuple[RemoteTree, bytes] | None:
        """The remote tree holding lower path `rel`, and the path inside it."""
        for prefix, tree in self.remotes:
            if rel == prefix:
                return tree, b""
            if rel.startswith(prefix + b"/"):
                return tree, rel[len(prefix) + 1:]
        return None

    def _mount_children(self, rel: bytes) -> set[bytes]:
        """Names under `rel` that lead to a remote mount point."""
        out: set[bytes] = set()
        for prefix, _ in self.remotes:
            if rel == b"" or prefix.startswith(rel + b"/"):
                rest = prefix[len(rel) + 1:] if rel else prefix
                out.add(rest.split(b"/", 1)[0])
        return out

    def lower_stat(self, rel: bytes) -> StatLike | None:
        """The lower entry at `rel` (local, remote, or a directory above a
        remote mount point), or None."""
        if rel.startswith(COMMIT_STAGING_PREFIX) and b"/" not in rel:
            return None  # a commit's staging dir in the lower root: not project content
        if self.remotes:
            hit = self.remote_for(rel)
            if hit is not None:
                return hit[0].stat(hit[1])
            st = self._local_lower_stat(rel)
            if st is None and rel and rel in self._ancestors():
                return SyntheticStat(stat.S_IFDIR | 0o755, synthetic_ino(rel), st_dev=0)
            return st
        return self._local_lower_stat(rel)

    def _local_lower_stat(self, rel: bytes) -> os.stat_result | None:
        if self.stack is not None:
            return self.stack.stat(rel)
        return lstat_or_none(self.lower_path(rel))

    def _ancestors(self) -> set[bytes]:
        out: set[bytes] = set()
        for prefix, _ in self.remotes:
            parts = prefix.split(b"/")
            out.update(b"/".join(parts[:i]) for i in range(1, len(parts)))
        return out

    def lower_names(self, rel: bytes) -> list[bytes]:
        """Names in the lower directory `rel` (empty if it is not one)."""
        if self.remotes:
            hit = self.remote_for(rel)
            if hit is not None:
                return hit[0].names(hit[1])
        if self.stack is not None:
            names = self.stack.names(rel)
        else:
            try:
                with os.scandir(self.lower_path(rel)) as it:
                    names = [os.fsencode(e.name) for e in it]
            except (FileNotFoundError, NotADirectoryError):
                names = []
        if not rel:
            names = [n for n in names if not n.startswith(COMMIT_STAGING_PREFIX)]
        if self.remotes:
            names = sorted(set(names) | self._mount_children(rel))
        return names

    def is_whiteout(self, path: bytes, st: os.stat_result) -> bool:
        if is_whiteout_stat(st):
            return True
        if self.names.ns == "user" and stat.S_ISREG(st.st_mode) and st.st_size == 0:
            try:
                os.getxattr(path, self.names.xattr_whiteout, follow_symlinks=False)
            except OSError:
                return False
            return True
        return False


@dataclass(frozen=True)
class Resolved:
    """One visible entry of the merged tree.

    `st` is the stat of the layer that shows (upper if `in_upper`); `lower`
    is the lower path it is drawn from (files: only while not copied up;
    directories: the lower dir merged in, None if opaque or upper-only);
    `origin` is the copy-up fingerprint, if the upper entry has one.
    """

    st: StatLike
    in_upper: bool
    lower: bytes | None
    origin: Origin | None


def lstat_or_none(path: str | bytes) -> os.stat_result | None:
    """lstat, or None where nothing is (missing entry or parent)."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def same_content(a: str | bytes, b: str | bytes) -> bool:
    """Byte-for-byte equality of two regular files (the review's change scan, the
    crash check of unsynced copy-ups)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True


def lower_dir_for(layers: Layers, upper_path: bytes, parent_lower: bytes | None,
                  name: bytes) -> bytes | None:
    """The lower directory an upper directory merges with, or None."""
    opaque = get_xattr(upper_path, layers.names.opaque)
    if opaque == b"y":
        return None
    redirect = get_xattr(upper_path, layers.names.redirect)
    if redirect is not None:
        if redirect.startswith(b"/"):
            target = redirect.strip(b"/")
        elif parent_lower is not None:
            target = join(parent_lower, redirect)
        else:
            return None
        st = layers.lower_stat(target)
        return target if st is not None and stat.S_ISDIR(st.st_mode) else None
    if parent_lower is None:
        return None
    candidate = join(parent_lower, name)
    st = layers.lower_stat(candidate)
    return candidate if st is not None and stat.S_ISDIR(st.st_mode) else None


def resolve_child(layers: Layers, parent_path: bytes, parent_in_upper: bool,
                  parent_lower: bytes | None, name: bytes) -> Resolved | None:
    """Resolve `name` in a merged directory; None if it is not visible."""
    if parent_in_upper:
        upath = layers.upper_path(join(parent_path, name))
        ust = lstat_or_none(upath)
        if ust is not None:
            if layers.is_whiteout(upath, ust):
                return None
            raw_origin = get_xattr(upath, layers.names.origin)
            origin = None
            if raw_origin is not None:
                try:
                    origin = Origin.decode(raw_origin)
                except (ValueError, TypeError):
                    origin = None
            lower = None
            if stat.S_ISDIR(ust.st_mode):
                lower = lower_dir_for(layers, upath, parent_lower, name)
            return Resolved(ust, True, lower, origin)
    if parent_lower is None:
        return None
    lrel = join(parent_lower, name)
    lst = layers.lower_stat(lrel)
    if lst is None:
        return None
    return Resolved(lst, False, lrel, None)


def lower_has(layers: Layers, parent_lower: bytes | None, name: bytes) -> bool:
    """True if the lower directory merged into a parent has an entry `name`."""
    if parent_lower is None:
        return False
    return layers.lower_stat(join(parent_lower, name)) is not None


def merged_names(layers: Layers, path: bytes, in_upper: bool,
                 lower: bytes | None) -> list[bytes]:
    """The names a merged directory lists (sorted: upper and lower mixed)."""
    names, hidden = _upper_names(layers, path) if in_upper else (set(), set())
    if lower is not None:
        names.update(n for n in layers.lower_names(lower) if n not in hidden)
    return sorted(names)


def placed_names(layers: Layers, path: bytes, in_upper: bool,
                 lower: bytes | None) -> list[bytes | None]:
    """`merged_names` in the order a fresh listing places them: the lower
    directory's names sorted, each hidden one (a whiteout over it) holding
    its place as None, then the upper's own names sorted. So a directory's
    names keep the places they had while it was lower-only (sorted lower
    names, as the FUSE shim lists it) after it gets an upper directory."""
    upper, hidden = _upper_names(layers, path) if in_upper else (set(), set())
    below = sorted(layers.lower_names(lower)) if lower is not None else []
    shown: list[bytes | None] = [None if n in hidden else n for n in below]
    below_set = set(below)
    shown.extend(sorted(n for n in upper if n not in below_set))
    return shown


def _upper_names(layers: Layers, path: bytes) -> tuple[set[bytes], set[bytes]]:
    """The upper directory at `path`: its names, and its whiteouts' names."""
    names: set[bytes] = set()
    hidden: set[bytes] = set()
    upath = layers.upper_path(path)
    with os.scandir(upath) as it:
        for entry in it:
            name = os.fsencode(entry.name)
            st = entry.stat(follow_symlinks=False)
            if layers.is_whiteout(upath + b"/" + name, st):
                hidden.add(name)
            else:
                names.add(name)
    return names, hidden


def upper_whiteouts(layers: Layers, path: bytes) -> list[bytes]:
    """Whiteout names inside the upper directory at `path`."""
    return list(_upper_names(layers, path)[1])
