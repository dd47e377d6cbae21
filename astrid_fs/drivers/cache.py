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

Bounds: at most `max_entries` metadata entries and `data_bytes` of blocks,
least recently used dropped first. A block is a view into the buffer an inner
read returned, which may be larger than the blocks cut from it (a read-ahead
segment): the bound counts each such buffer whole, for as long as any block
holds it. One lock guards both maps; no I/O happens under it.

Copies: a read whose blocks lie side by side in one buffer returns a view of
it (the FUSE reply is written from it); other reads join their blocks (one
copy). `try_pread` answers from cached blocks, or from what the inner reader
already holds, without I/O (the FUSE thread calls it; see fuse/ops.py).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from astrid_fs.drivers.base import (
    DelegatingDriver,
    EntryStat,
    LowerDriver,
    Reader,
    TryReader,
    parent_rel,
)
from astrid_fs.drivers.readahead import MIB

# Small: a cold first read fetches little (read-ahead streams the rest); a read
# of many blocks is one inner read and one lock acquisition, not one per block.
BLOCK = 64 * 1024
Key = tuple[str, str, int]  # (path, ETag, block index)


@dataclass(frozen=True, slots=True)
class Block:
    """A cached block: bytes [lo, hi) of the buffer one inner read returned
    (no copy per block; the blocks of one read share `run`)."""

    run: memoryview
    lo: int
    hi: int


def _owner(block: Block) -> object:
    """The object whose memory `block` keeps alive."""
    return block.run.obj if block.run.obj is not None else block.run


def _assemble(blocks: list[Block], lo: int, hi: int) -> bytes | memoryview:
    """Bytes [lo, hi) of the concatenated `blocks`: a view when they lie side
    by side in one buffer, else one copy."""
    first, last = blocks[0], blocks[-1]
    if all(b.run is first.run and b.lo == a.hi for a, b in itertools.pairwise(blocks)):
        return first.run[first.lo + lo:min(first.lo + hi, last.hi)]
    parts: list[memoryview] = []
    pos = 0
    for b in blocks:
        size = b.hi - b.lo
        a, z = max(lo - pos, 0), min(hi - pos, size)
        if a < z:
            parts.append(b.run[b.lo + a:b.lo + z])
        pos += size
    return b"".join(parts)


def _blocks_of(buffer: bytes | memoryview, count: int, bs: int) -> list[Block]:
    """`count` blocks of `bs` bytes cut from `buffer` (the last ones short or
    empty where it is short: the end of the object)."""
    run = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
    size = len(run)
    return [Block(run, min(n * bs, size), min((n + 1) * bs, size)) for n in range(count)]


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


def _under(key: str, rel: str) -> bool:
    return rel == "" or key == rel or key.startswith(rel + "/")


class CacheStats:
    """Hit and miss counters, for benchmarks and tests."""

    def __init__(self) -> None:
        self.meta_hits = 0
        self.meta_misses = 0
        self.data_hits = 0
        self.data_misses = 0


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
        self._blocks: OrderedDict[Key, Block] = OrderedDict()
        self._block_bytes = 0  # the buffers blocks hold, each counted once
        self._owners: dict[int, list[int]] = {}  # id(buffer) -> [blocks, bytes]
        self._inflight: dict[Key, cf.Future[Block]] = {}
        self.counters = CacheStats()

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
        with self._lock:
            self._stats[rel] = (self._clock() + self.config.metadata_ttl_s, found)
            self._trim_meta()
        return found

    def list_dir(self, rel: str) -> list[tuple[str, EntryStat]]:
        with self._lock:
            listing = self._fresh_list(rel, self._clock())
            if listing is not None:
                self.counters.meta_hits += 1
                return list(listing.entries)
            self.counters.meta_misses += 1
        entries = self.inner.list_dir(rel)
        with self._lock:
            self._lists[rel] = (self._clock() + self.config.metadata_ttl_s,
                                _Listing(entries, dict(entries)))
            self._trim_meta()
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
        return _CachedReader(self, rel, st)

    def _lookup(self, keys: list[Key]) -> tuple[list[Block | cf.Future[Block]], list[int]]:
        """For each key its cached block, or the future of its fetch; and the
        indexes of the fetches the caller now owns (it must `_release` them).
        One lock for all: a read of many blocks costs one acquisition."""
        found: list[Block | cf.Future[Block]] = []
        mine: list[int] = []
        with self._lock:
            for i, key in enumerate(keys):
                block = self._blocks.get(key)
                if block is not None:
                    self._blocks.move_to_end(key)
                    self.counters.data_hits += 1
                    found.append(block)
                    continue
                self.counters.data_misses += 1
                running = self._inflight.get(key)
                if running is None:
                    running = cf.Future()
                    self._inflight[key] = running
                    mine.append(i)
                found.append(running)
        return found, mine

    def _peek(self, keys: list[Key]) -> tuple[list[Block] | None, bool]:
        """(the cached blocks of all `keys` or None, whether any is being
        fetched); counts hits only when all are cached. Never waits."""
        with self._lock:
            found = [self._blocks.get(key) for key in keys]
            if any(b is None for b in found):
                return None, any(key in self._inflight for key in keys)
            for key in keys:
                self._blocks.move_to_end(key)
            self.counters.data_hits += len(keys)
            return [b for b in found if b is not None], False

    def _put(self, keys: list[Key], buffer: bytes | memoryview) -> list[Block]:
        """Cache the blocks of `keys` cut from `buffer` (read from block
        `keys[0]` on) and return them."""
        blocks = _blocks_of(buffer, len(keys), self.config.block_size)
        with self._lock:
            self.counters.data_misses += len(keys)
            self._store(list(zip(keys, blocks, strict=True)))
        return blocks

    def _hold(self, block: Block) -> None:
        owner = _owner(block)
        held = self._owners.get(id(owner))
        if held is None:
            held = self._owners[id(owner)] = [0, memoryview(owner).nbytes]  # type: ignore[arg-type]
            self._block_bytes += held[1]
        held[0] += 1

    def _drop(self, block: Block) -> None:
        key = id(_owner(block))
        held = self._owners[key]
        held[0] -= 1
        if held[0] == 0:
            del self._owners[key]
            self._block_bytes -= held[1]

    def _store(self, blocks: list[tuple[Key, Block]]) -> None:
        """Cache `blocks` and trim to the bound (call with the lock held)."""
        for key, block in blocks:
            old = self._blocks.pop(key, None)
            if old is not None:
                self._drop(old)
            self._blocks[key] = block
            self._hold(block)
        while self._block_bytes > self.config.data_bytes and self._blocks:
            _, dropped = self._blocks.popitem(last=False)
            self._drop(dropped)

    def _release(self, done: list[tuple[Key, cf.Future[Block], Block | None]],
                 error: BaseException | None = None) -> None:
        """Cache the fetched blocks (None: failed with `error`) and wake their waiters."""
        with self._lock:
            for key, _future, _block in done:
                self._inflight.pop(key, None)
            self._store([(key, block) for key, _f, block in done if block is not None])
        for _key, future, block in done:
            if block is None:
                future.set_exception(error or RuntimeError("block fetch failed"))
            else:
                future.set_result(block)

    # ---- invalidation --------------------------------------------------------------

    def invalidate(self, rel: str = "", tree: bool = True) -> None:
        """Forget `rel` (and, with `tree`, everything under it) and its parent listing."""
        with self._lock:
            for table in (self._stats, self._lists):
                doomed = [k for k in table if (_under(k, rel) if tree else k == rel)]
                for k in doomed:
                    del table[k]
            if rel:
                self._lists.pop(parent_rel(rel), None)
                self._stats.pop(parent_rel(rel), None)
            for key in [k for k in self._blocks if _under(k[0], rel)]:
                self._drop(self._blocks.pop(key))

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


class _CachedReader:
    """Block-aligned reads through the shared block cache; the inner reader
    (with its read-ahead) is opened only on the first miss."""

    def __init__(self, cache: CachingDriver, rel: str, st: EntryStat) -> None:
        self._cache = cache
        self._rel = rel
        self._st = st
        self._etag = st.etag or ""
        self._inner: Reader | None = None
        self._lock = threading.Lock()

    def _reader(self) -> Reader:
        with self._lock:
            if self._inner is None:
                self._inner = self._cache.inner.open_reader(self._rel, self._st)
            return self._inner

    def pread(self, size: int, offset: int) -> bytes | memoryview:
        end = min(offset + size, self._st.size)
        if offset >= end:
            return b""
        bs = self._cache.config.block_size
        first, last = offset // bs, (end - 1) // bs
        keys = [(self._rel, self._etag, i) for i in range(first, last + 1)]
        # Single flight: concurrent reads of one block (the kernel's read-ahead
        # sends several) wait for one fetch.
        got, mine = self._cache._lookup(keys)
        if mine:
            self._fetch_runs(keys, got, mine)
        blocks: list[Block] = []
        for item in got:
            block = item if isinstance(item, Block) else \
                item.result(timeout=self._cache.config.wait_timeout_s)
            blocks.append(block)
            if block.hi - block.lo < bs:
                break  # end of the object
        return _assemble(blocks, offset - first * bs, end - first * bs)

    def try_pread(self, size: int, offset: int) -> bytes | memoryview | None:
        """`pread` from cached blocks, or from what the inner reader already
        fetched (read-ahead); None when that would need I/O or a wait."""
        end = min(offset + size, self._st.size)
        if offset >= end:
            return None
        bs = self._cache.config.block_size
        first, last = offset // bs, (end - 1) // bs
        keys = [(self._rel, self._etag, i) for i in range(first, last + 1)]
        blocks, fetching = self._cache._peek(keys)
        if blocks is None:
            inner = self._inner
            if fetching or not isinstance(inner, TryReader):
                return None
            buffer = inner.try_pread(len(keys) * bs, first * bs)
            if buffer is None:
                return None
            blocks = self._cache._put(keys, buffer)
        if any(b.hi - b.lo < bs for b in blocks[:-1]):
            return None  # the object ended early: pread sorts that out
        return _assemble(blocks, offset - first * bs, end - first * bs)

    def _fetch_runs(self, keys: list[Key], got: list[Block | cf.Future[Block]],
                    mine: list[int]) -> None:
        """Fetch the claimed blocks (`mine`, indexes into `keys`), one inner read
        per contiguous run; cache them and put them in `got`. Every claim is
        released, on error too."""
        bs = self._cache.config.block_size
        runs: list[list[int]] = [[mine[0]]]
        for i in mine[1:]:
            if i == runs[-1][-1] + 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        pending = {i: f for i in mine if isinstance(f := got[i], cf.Future)}
        try:
            for run in runs:
                view = _blocks_of(self._reader().pread(len(run) * bs, keys[run[0]][2] * bs),
                                  len(run), bs)
                done: list[tuple[Key, cf.Future[Block], Block | None]] = []
                for block, i in zip(view, run, strict=True):
                    got[i] = block
                    done.append((keys[i], pending.pop(i), block))
                self._cache._release(done)
        except BaseException as e:
            self._cache._release([(keys[i], f, None) for i, f in pending.items()], e)
            raise

    def close(self) -> None:
        with self._lock:
            inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()
