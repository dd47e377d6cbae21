"""A caching wrapper for remote drivers: metadata with a TTL, data by LRU.

Consistency (what a reader through the cache may see):
- Metadata (`stat`, `list_dir`) is at most `metadata_ttl_s` old. A `stat`
  of a name inside a freshly listed directory is answered from that listing
  (negative answers too), so `ls -l` costs one LIST, not one HEAD per entry.
- Data is cached in blocks keyed by (path, ETag): an object replaced on the
  server is never served from an older version's blocks once its new
  metadata is seen (so: within the TTL); a reader open across the change gets
  `Stale` from the driver instead of mixed content.
- Write-back through this wrapper (commit) invalidates what it touched, the
  parent listings and every cached key under a renamed or deleted tree: a
  session reads its own commit at once.
- `fingerprint` is never cached (commit's conflict check needs the truth).
- An `observer` (set by the mount daemon) is told every stat and listing
  fetched from the driver, before any caller sees it: what the session saw
  of the source, first (review/remotebase.py records the session's base
  from it).

Bounds: at most `max_entries` metadata entries and `data_bytes` of blocks,
least recently used dropped first (the blocks: drivers/blockcache.py, which
also says how buffers are counted and when a read is a view, not a copy).
Each cache has its own lock; no I/O happens under either. Callers listing
the same uncached directory at once share one LIST (as blocks share one
fetch).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from astrid_fs.drivers.base import (
    DelegatingDriver,
    EntryStat,
    LowerDriver,
    Reader,
    parent_rel,
)
from astrid_fs.drivers.blockcache import BLOCK, BlockCache, CachedReader, CacheStats, is_under
from astrid_fs.drivers.errors import Timeout
from astrid_fs.drivers.readahead import MIB


@dataclass(frozen=True)
class CacheConfig:
    """Sizes and TTL; `data_bytes=0` turns the data cache off."""

    metadata_ttl_s: float = 30.0
    max_entries: int = 200_000
    data_bytes: int = 256 * MIB
    block_size: int = BLOCK
    wait_timeout_s: float = 120.0


@dataclass(frozen=True)
class _Listing:
    entries: list[tuple[str, EntryStat]]
    by_name: dict[str, EntryStat]


class Observer(Protocol):
    """Told what the driver answered, as it answered (any thread)."""

    def saw_stat(self, rel: str, found: EntryStat | None) -> None: ...
    def saw_listing(self, rel: str, entries: list[tuple[str, EntryStat]]) -> None: ...


class CachingDriver(DelegatingDriver):
    """Wraps a driver with a metadata cache (TTL) and a block data cache (LRU)."""

    def __init__(self, inner: LowerDriver, config: CacheConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(inner)
        self.config = config or CacheConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._stats: OrderedDict[str, tuple[float, EntryStat | None]] = OrderedDict()
        self._lists: OrderedDict[str, tuple[float, _Listing]] = OrderedDict()
        # LISTs running now, each a future its other callers wait on.
        self._listing: dict[str, cf.Future[list[tuple[str, EntryStat]]]] = {}
        self.counters = CacheStats()
        self.blocks = BlockCache(self.config.data_bytes, self.config.block_size,
                                 self.counters)
        self.observer: Observer | None = None

    # ---- metadata -----------------------------------------------------------------

    def _fresh_list(self, rel: str, now: float) -> _Listing | None:
        hit = self._lists.get(rel)
        if hit is None or hit[0] <= now:
            return None
        self._lists.move_to_end(rel)
        return hit[1]

    def stat(self, rel: str) -> EntryStat | None:
        now = self._clock()
        with self._lock:
            hit = self._stats.get(rel)
            if hit is not None and hit[0] > now:
                self._stats.move_to_end(rel)
                self.counters.meta_hits += 1
                return hit[1]
            if rel:
                listing = self._fresh_list(parent_rel(rel), now)
                if listing is not None:
                    self.counters.meta_hits += 1
                    return listing.by_name.get(rel.rpartition("/")[2])
            self.counters.meta_misses += 1
        found = self.inner.stat(rel)
        if self.observer is not None:
            self.observer.saw_stat(rel, found)
        with self._lock:
            self._stats[rel] = (self._clock() + self.config.metadata_ttl_s, found)
            self._trim_meta()
        return found

    def list_dir(self, rel: str) -> list[tuple[str, EntryStat]]:
        """The listing of `rel`, from the cache or one LIST: callers that
        ask for the same uncached directory at once (parallel lookups in it,
        DriverTree.warm_lookup) wait for the first one's LIST."""
        with self._lock:
            listing = self._fresh_list(rel, self._clock())
            if listing is not None:
                self.counters.meta_hits += 1
                return list(listing.entries)
            self.counters.meta_misses += 1
            running = self._listing.get(rel)
            mine = running is None
            if running is None:
                running = self._listing[rel] = cf.Future()
        if not mine:
            try:
                return list(running.result(timeout=self.config.wait_timeout_s))
            except cf.TimeoutError:
                raise Timeout(f"listing {rel or '/'} timed out") from None
        try:
            entries = self.inner.list_dir(rel)
        except BaseException as e:
            with self._lock:
                self._listing.pop(rel, None)
            running.set_exception(e)
            raise
        if self.observer is not None:
            self.observer.saw_listing(rel, entries)
        with self._lock:
            self._lists[rel] = (self._clock() + self.config.metadata_ttl_s,
                                _Listing(entries, dict(entries)))
            self._trim_meta()
            self._listing.pop(rel, None)
        running.set_result(entries)
        return list(entries)

    def _trim_meta(self) -> None:
        while len(self._stats) + len(self._lists) > self.config.max_entries:
            if self._lists and (not self._stats or len(self._lists) > len(self._stats)):
                self._lists.popitem(last=False)
            else:
                self._stats.popitem(last=False)

    # ---- non-blocking peeks (for callers that must not wait on the network) -------

    def peek_stat(self, rel: str, fresh_only: bool = True) -> tuple[bool, EntryStat | None]:
        """(known, stat) from the cache alone: never calls the driver.
        With `fresh_only=False` an expired entry still counts as known."""
        now = self._clock()
        with self._lock:
            hit = self._stats.get(rel)
            if hit is not None and (hit[0] > now or not fresh_only):
                return True, hit[1]
            if rel:
                got = self._lists.get(parent_rel(rel))
                if got is not None and (got[0] > now or not fresh_only):
                    return True, got[1].by_name.get(rel.rpartition("/")[2])
            return False, None

    def peek_list(self, rel: str, fresh_only: bool = True) -> list[tuple[str, EntryStat]] | None:
        """The cached listing of `rel`, or None; never calls the driver."""
        with self._lock:
            got = self._lists.get(rel)
            if got is None or (fresh_only and got[0] <= self._clock()):
                return None
            return list(got[1].entries)

    # ---- data ------------------------------------------------------------------------

    def open_reader(self, rel: str, expect: EntryStat | None = None) -> Reader:
        st = expect if expect is not None else self.stat(rel)
        if self.config.data_bytes <= 0 or st is None or st.kind != "file" or st.etag is None:
            return self.inner.open_reader(rel, st if st is not None and st.kind == "file"
                                          else None)
        return CachedReader(self.blocks, lambda: self.inner.open_reader(rel, st), rel, st,
                            self.config.wait_timeout_s)

    # ---- invalidation --------------------------------------------------------------

    def invalidate(self, rel: str = "", tree: bool = True) -> None:
        """Forget `rel` (and, with `tree`, everything under it) and its parent listing."""
        with self._lock:
            for table in (self._stats, self._lists):
                doomed = [k for k in table if (is_under(k, rel) if tree else k == rel)]
                for k in doomed:
                    del table[k]
            if rel:
                self._lists.pop(parent_rel(rel), None)
                self._stats.pop(parent_rel(rel), None)
        self.blocks.forget(rel)

    def put_file(self, rel: str, local_path: Path, mode: int, mtime_ns: int) -> str | None:
        try:
            return self.inner.put_file(rel, local_path, mode, mtime_ns)
        finally:
            self._invalidate_ancestors(rel)

    def _invalidate_ancestors(self, rel: str) -> None:
        # A new key can create parent prefixes that were absent (or cached absent).
        self.invalidate(rel)
        while rel:
            rel = parent_rel(rel)
            self.invalidate(rel, tree=False)

    def make_dir(self, rel: str, mode: int) -> None:
        try:
            self.inner.make_dir(rel, mode)
        finally:
            self._invalidate_ancestors(rel)

    def make_symlink(self, rel: str, target: str) -> None:
        try:
            self.inner.make_symlink(rel, target)
        finally:
            self._invalidate_ancestors(rel)

    def set_attrs(self, rel: str, mode: int | None, mtime_ns: int | None) -> None:
        try:
            self.inner.set_attrs(rel, mode, mtime_ns)
        finally:
            self.invalidate(rel)

    def delete(self, rel: str) -> None:
        try:
            self.inner.delete(rel)
        finally:
            self._invalidate_ancestors(rel)

    def delete_tree(self, rel: str) -> None:
        try:
            self.inner.delete_tree(rel)
        finally:
            self._invalidate_ancestors(rel)

    def rename(self, old: str, new: str) -> None:
        try:
            self.inner.rename(old, new)
        finally:
            self._invalidate_ancestors(old)
            self._invalidate_ancestors(new)


