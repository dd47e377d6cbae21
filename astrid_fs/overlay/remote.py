"""Remote trees for the overlay: a mount-table entry's driver behind the
`layers.RemoteTree` seam.

`DriverTree` adapts one driver (always behind a `CachingDriver`) to what the
overlay needs. The overlay calls `stat`, `names`, `readlink` and
`fingerprint` on the FUSE thread, so those answer from the cache only (an
expired entry is still an answer there; the adapter re-warms it first when
`is_warm` says it is stale). `warm` does the network work in a worker
thread: the entry's stat (from its parent's listing when that is cached),
the listing of a directory, and with `data=True` the whole content, spooled
to a local file that `fetch_to` copies into a copy-up. `fingerprint` is the
ETag the session saw (the spooled version's), which copy-up records as the
base for commit's conflict check.

Every driver error becomes an `OSError` with the driver's errno here, at the
one boundary where the overlay's world (OSError) meets the drivers'.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from astrid_fs.drivers.base import EntryStat, LowerDriver, Reader, parent_rel, try_pread_of
from astrid_fs.drivers.cache import CacheConfig, CachingDriver
from astrid_fs.drivers.errors import DriverError
from astrid_fs.drivers.readahead import MIB
from astrid_fs.drivers.registry import Registry
from astrid_fs.errors import MountError, SessionError, UsageError
from astrid_fs.mounttable import MountEntry, MountTable
from astrid_fs.overlay.layers import RemoteTree, SyntheticStat

T = TypeVar("T")
log = logging.getLogger("astrid_fs.remote")

# Device numbers for remote trees: far above any real st_dev (major/minor
# encodings use 32 bits), one per mount entry.
REMOTE_DEV_BASE = 0xA57D << 32
_SPOOL_CHUNK = 8 * MIB
_LOOKED_IN_MAX = 4096


def _os_error(e: DriverError) -> OSError:
    return OSError(e.errno, str(e))


@contextlib.contextmanager
def _as_oserror() -> Iterator[None]:
    try:
        yield
    except DriverError as e:
        raise _os_error(e) from None


def _guard(fn: Callable[[], T]) -> T:
    with _as_oserror():
        return fn()


class _OsReader:
    """A driver Reader whose errors are OSErrors (what fuse_ops catches)."""

    def __init__(self, inner: Reader, touch: Callable[[], None]) -> None:
        self._inner = inner
        self._touch = touch
        # Decided once: try_pread runs on the FUSE thread for every READ.
        self._try = try_pread_of(inner)

    def pread(self, size: int, offset: int) -> bytes | memoryview:
        self._touch()
        with _as_oserror():
            return self._inner.pread(size, offset)

    def try_pread(self, size: int, offset: int) -> bytes | memoryview | None:
        """What the cache already holds, without I/O (see drivers/cache.py)."""
        if self._try is None:
            return None
        with _as_oserror():
            return self._try(size, offset)

    def close(self) -> None:
        with _as_oserror():
            self._inner.close()


class DriverTree:
    """One mount entry as a `RemoteTree`. Thread-safe."""

    def __init__(self, cache: CachingDriver, dev: int, spool_dir: Path) -> None:
        self.cache = cache
        self.dev = dev
        self._spool_dir = spool_dir
        self._uid, self._gid = os.getuid(), os.getgid()
        self._lock = threading.Lock()
        self._spooled: dict[str, tuple[Path, str | None]] = {}
        # Directories a lookup was warmed in (by a stat alone), until when.
        self._looked_in: dict[str, float] = {}
        # When the session last made this tree fetch (or read) something:
        # the base walk waits for a quiet source (review/remotebase.py).
        self.last_used = 0.0

    def _touch(self) -> None:
        self.last_used = time.monotonic()

    # ---- stat helpers --------------------------------------------------------------

    def _synthetic(self, st: EntryStat) -> SyntheticStat:
        return SyntheticStat(st_mode=st.mode, st_ino=st.ino, st_dev=self.dev,
                             st_size=st.size, st_mtime_ns=st.mtime_ns,
                             st_nlink=2 if st.kind == "dir" else 1,
                             st_uid=self._uid, st_gid=self._gid)

    def _entry(self, rel: str) -> EntryStat | None:
        known, st = self.cache.peek_stat(rel, fresh_only=False)
        if known:
            return st
        # Not warmed (the adapter warms first; this is the safety net).
        log.debug("remote stat %s on the FUSE thread (not warmed)", rel)
        return _guard(lambda: self.cache.stat(rel))

    # ---- RemoteTree ------------------------------------------------------------------------

    def is_warm(self, rel: bytes, data: bool = False) -> bool:
        r = os.fsdecode(rel)
        known, st = self.cache.peek_stat(r)
        if not known:
            return False
        if st is not None and st.kind == "dir" and self.cache.peek_list(r) is None:
            return False
        if data and st is not None and st.kind == "file":
            with self._lock:
                spooled = self._spooled.get(r)
            return spooled is not None and spooled[1] == st.etag and spooled[0].exists()
        return True

    def warm(self, rel: bytes, data: bool = False) -> None:
        self._touch()
        r = os.fsdecode(rel)
        with _as_oserror():
            st = self.cache.stat(r)
            if st is not None and st.kind == "dir":
                self.cache.list_dir(r)
            if data and st is not None and st.kind == "file":
                self._spool(r, st)

    def is_known(self, rel: bytes) -> bool:
        """Whether a LOOKUP of `rel` is answered by the cache: the entry's
        own stat or its parent's listing, fresh."""
        return self.cache.peek_stat(os.fsdecode(rel))[0]

    def warm_lookup(self, rel: bytes) -> None:
        """Cache what a LOOKUP of `rel` needs, and no more: a directory is
        not listed for its own lookup. The first lookup in a directory not
        listed stats the name alone (one HEAD for an object); from the
        directory's second such lookup within the metadata TTL on, the
        directory is listed instead, which answers that name and every later
        one, found or not, with no further request. So opening one object of
        a large prefix costs a HEAD, not a listing of the prefix (measured:
        opening the 256 MiB bench object in a bucket of 10,000 keys took
        0.46-0.56 s on s3rver, which lists by walking every key, against
        s3fs' 20-29 ms), and a burst of lookups (a compiler's probes, `stat`
        of many names) still costs one LIST."""
        self._touch()
        r = os.fsdecode(rel)
        with _as_oserror():
            if r and self._looked_in_before(parent_rel(r)):
                self.cache.list_dir(parent_rel(r))
            self.cache.stat(r)

    def _looked_in_before(self, parent: str) -> bool:
        """Record a lookup warmed in `parent`; True if one was within the TTL."""
        now = time.monotonic()
        with self._lock:
            seen = self._looked_in.get(parent)
            if seen is not None and seen > now:
                return True
            if len(self._looked_in) >= _LOOKED_IN_MAX:
                # A bound, not an LRU: at worst a directory's next lookup is
                # a HEAD again instead of its listing.
                self._looked_in.clear()
            self._looked_in[parent] = now + self.cache.config.metadata_ttl_s
            return False

    def _spool(self, rel: str, st: EntryStat) -> Path:
        with self._lock:
            have = self._spooled.get(rel)
        if have is not None and have[1] == st.etag and have[0].exists():
            return have[0]
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.blake2b(f"{rel}\0{st.etag}".encode("utf-8", "surrogateescape"),
                                 digest_size=12).hexdigest()
        path = self._spool_dir / digest
        tmp = path.with_suffix(f".part{threading.get_ident()}")
        reader = self.cache.open_reader(rel, st)
        try:
            with open(tmp, "wb") as out:
                offset = 0
                while chunk := reader.pread(_SPOOL_CHUNK, offset):
                    out.write(chunk)
                    offset += len(chunk)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            reader.close()
        with self._lock:
            self._spooled[rel] = (path, st.etag)
        return path

    def stat(self, rel: bytes) -> SyntheticStat | None:
        st = self._entry(os.fsdecode(rel))
        return self._synthetic(st) if st is not None else None

    def names(self, rel: bytes) -> list[bytes]:
        r = os.fsdecode(rel)
        entries = self.cache.peek_list(r, fresh_only=False)
        if entries is None:
            log.debug("remote listing %s on the FUSE thread (not warmed)", r)
            try:
                entries = self.cache.list_dir(r)
            except DriverError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    return []
                raise _os_error(e) from None
        return [os.fsencode(name) for name, _ in entries]

    def readlink(self, rel: bytes) -> bytes:
        return os.fsencode(_guard(lambda: self.cache.readlink(os.fsdecode(rel))))

    def open_reader(self, rel: bytes) -> _OsReader:
        self._touch()
        r = os.fsdecode(rel)
        st = self._entry(r)
        return _OsReader(_guard(lambda: self.cache.open_reader(r, st)), self._touch)

    def fetch_to(self, rel: bytes, fd: int) -> None:
        r = os.fsdecode(rel)
        st = self._entry(r)
        if st is None:
            raise FileNotFoundError(2, "remote entry vanished", r)
        path = _guard(lambda: self._spool(r, st))
        with open(path, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            copied = 0
            while copied < size:
                n = os.copy_file_range(src.fileno(), fd, size - copied)
                if n == 0:
                    break
                copied += n
        with self._lock:
            self._spooled.pop(r, None)
        path.unlink(missing_ok=True)

    def fingerprint(self, rel: bytes) -> str | None:
        r = os.fsdecode(rel)
        with self._lock:
            spooled = self._spooled.get(r)
        if spooled is not None:
            return spooled[1]
        st = self._entry(r)
        return st.etag if st is not None else None

    def invalidate(self) -> None:
        """Forget every cached listing, stat and block (after a commit or
        rollback changed the bucket or the session behind the mount)."""
        self.cache.invalidate("", tree=True)

    def close(self) -> None:
        self.cache.close()


def open_tree(entry: MountEntry, index: int, spool_dir: Path,
              registry: Registry | None = None) -> DriverTree:
    """A DriverTree for a non-root entry (no network until warmed)."""
    driver: LowerDriver = (registry or Registry()).open(entry.source, entry.option_map())
    cache = CachingDriver(driver, CacheConfig(metadata_ttl_s=entry.metadata_ttl_s,
                                              data_bytes=entry.cache_mib * MIB))
    return DriverTree(cache, REMOTE_DEV_BASE + index, spool_dir / f"m{index}")


def build_remotes(table: MountTable, spool_dir: Path,
                  registry: Registry | None = None) -> tuple[tuple[bytes, RemoteTree], ...]:
    """`Layers.remotes` for a table: every entry but `/`, longest path first."""
    registry = registry or Registry()
    return tuple((os.fsencode(entry.rel), open_tree(entry, i, spool_dir, registry))
                 for i, entry in enumerate(table.remotes()))


def check_remotes(table: MountTable, registry: Registry | None = None) -> None:
    """Open and `check()` every non-root entry: one line for the first that fails."""
    registry = registry or Registry()
    for entry in table.remotes():
        driver = registry.open(entry.source, entry.option_map())
        try:
            driver.check()
        except DriverError as e:
            raise MountError(f"cannot mount {entry.source} at {entry.path}: {e}") from None
        finally:
            driver.close()


SESSION_TABLE = "mounts.toml"


def prepare_session_mounts(mounts: str | None, session_root: Path, lower: Path,
                           registry: Registry | None = None) -> str | None:
    """For `astrid-fs mount [--mounts FILE]`: validate the table, check every
    remote source (fail fast, one line), and record it in the session
    (`SESSION_TABLE`, no credentials). A reopened session reuses the table it
    recorded; a different one is refused, as a different lower is. Returns the
    recorded table's path for the daemon, or None without remote entries."""
    recorded = session_root / SESSION_TABLE
    registry = registry or Registry()
    if mounts is None:
        if not recorded.exists():
            return None
        table = MountTable.load(recorded, registry)
    else:
        table = MountTable.load(Path(mounts).expanduser(), registry)
        root = table.root()
        if root is not None and (root.driver != "local" or Path(root.source) != lower):
            raise UsageError(f"{mounts}: the '/' entry ({root.source}) must be the --lower "
                             f"directory {lower}; or leave '/' out of the table")
        table = table.with_root(lower)
        if recorded.exists() and MountTable.load(recorded, registry) != table:
            raise SessionError(f"session {session_root.name} was made with another mount "
                               f"table ({recorded}); choose another --session name")
    if not table.remotes():
        return None
    check_remotes(table, registry)
    if not recorded.exists():
        table.write(recorded)
    return str(recorded)
