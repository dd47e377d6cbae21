"""The block cache under `CachingDriver`: data blocks by (path, ETag, index), LRU.

A block is a view into the buffer one inner read returned, which may be larger
than the blocks cut from it (a read-ahead segment): the byte bound counts each
such buffer whole, for as long as any block holds it. Concurrent reads of one
block wait for one fetch (single flight). One lock guards the maps; no I/O
happens under it.

Copies: a read whose blocks lie side by side in one buffer returns a view of
it (the FUSE reply is written from it); other reads join their blocks (one
copy). `CachedReader.try_pread` answers from cached blocks, or from what the
inner reader already holds, without I/O (the FUSE thread calls it; see
fuse/file_ops.py).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from astrid_fs.drivers.base import EntryStat, Reader, TryPread, try_pread_of

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


class CacheStats:
    """Hit and miss counters, for benchmarks and tests."""

    def __init__(self) -> None:
        self.meta_hits = 0
        self.meta_misses = 0
        self.data_hits = 0
        self.data_misses = 0



def is_under(key: str, rel: str) -> bool:
    return rel == "" or key == rel or key.startswith(rel + "/")


class BlockCache:
    """Data blocks of remote files, at most `data_bytes` of buffers held; thread-safe."""

    def __init__(self, data_bytes: int, block_size: int, counters: CacheStats) -> None:
        self.data_bytes = data_bytes
        self.block_size = block_size
        self.counters = counters
        self._lock = threading.Lock()
        self._blocks: OrderedDict[Key, Block] = OrderedDict()
        self._block_bytes = 0  # the buffers blocks hold, each counted once
        self._owners: dict[int, list[int]] = {}  # id(buffer) -> [blocks, bytes]
        self._inflight: dict[Key, cf.Future[Block]] = {}

    def lookup(self, keys: list[Key]) -> tuple[list[Block | cf.Future[Block]], list[int]]:
        """For each key its cached block, or the future of its fetch; and the
        indexes of the fetches the caller now owns (it must `release` them).
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

    def peek(self, keys: list[Key]) -> tuple[list[Block] | None, bool]:
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

    def put(self, keys: list[Key], buffer: bytes | memoryview) -> list[Block]:
        """Cache the blocks of `keys` cut from `buffer` (read from block
        `keys[0]` on) and return them."""
        blocks = _blocks_of(buffer, len(keys), self.block_size)
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
        while self._block_bytes > self.data_bytes and self._blocks:
            _, dropped = self._blocks.popitem(last=False)
            self._drop(dropped)

    def release(self, done: list[tuple[Key, cf.Future[Block], Block | None]],
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

    def forget(self, rel: str) -> None:
        """Drop every block of `rel` and of the paths under it ("": all)."""
        with self._lock:
            for key in [k for k in self._blocks if is_under(k[0], rel)]:
                self._drop(self._blocks.pop(key))


class CachedReader:
    """Block-aligned reads through the shared block cache; the inner reader
    (with its read-ahead) is opened only on the first miss."""

    def __init__(self, cache: BlockCache, open_inner: Callable[[], Reader], rel: str,
                 st: EntryStat, wait_timeout_s: float) -> None:
        self._cache = cache
        self._open_inner = open_inner
        self._wait_timeout_s = wait_timeout_s
        self._rel = rel
        self._st = st
        self._etag = st.etag or ""
        self._inner: Reader | None = None
        # The inner reader's try_pread, set with it (decided once: try_pread
        # runs on the FUSE thread for every READ).
        self._inner_try: TryPread | None = None
        self._lock = threading.Lock()

    def _reader(self) -> Reader:
        with self._lock:
            if self._inner is None:
                inner = self._open_inner()
                self._inner_try = try_pread_of(inner)
                self._inner = inner
            return self._inner

    def _span(self, size: int, offset: int) -> tuple[int, int, list[Key]]:
        """(end of the read, its first block, the keys of its blocks); no keys past
        the object's end."""
        end = min(offset + size, self._st.size)
        if offset >= end:
            return end, 0, []
        bs = self._cache.block_size
        first, last = offset // bs, (end - 1) // bs
        return end, first, [(self._rel, self._etag, i) for i in range(first, last + 1)]

    def pread(self, size: int, offset: int) -> bytes | memoryview:
        end, first, keys = self._span(size, offset)
        if not keys:
            return b""
        bs = self._cache.block_size
        # Single flight: concurrent reads of one block (the kernel's read-ahead
        # sends several) wait for one fetch.
        got, mine = self._cache.lookup(keys)
        if mine:
            self._fetch_runs(keys, got, mine)
        blocks: list[Block] = []
        for item in got:
            block = item if isinstance(item, Block) else \
                item.result(timeout=self._wait_timeout_s)
            blocks.append(block)
            if block.hi - block.lo < bs:
                break  # end of the object
        return _assemble(blocks, offset - first * bs, end - first * bs)

    def try_pread(self, size: int, offset: int) -> bytes | memoryview | None:
        """`pread` from cached blocks, or from what the inner reader already
        fetched (read-ahead); None when that would need I/O or a wait."""
        end, first, keys = self._span(size, offset)
        if not keys:
            return None
        bs = self._cache.block_size
        blocks, fetching = self._cache.peek(keys)
        if blocks is None:
            inner_try = self._inner_try
            if fetching or inner_try is None:
                return None
            buffer = inner_try(len(keys) * bs, first * bs)
            if buffer is None:
                return None
            blocks = self._cache.put(keys, buffer)
        if any(b.hi - b.lo < bs for b in blocks[:-1]):
            return None  # the object ended early: pread sorts that out
        return _assemble(blocks, offset - first * bs, end - first * bs)

    def _fetch_runs(self, keys: list[Key], got: list[Block | cf.Future[Block]],
                    mine: list[int]) -> None:
        """Fetch the claimed blocks (`mine`, indexes into `keys`), one inner read
        per contiguous run; cache them and put them in `got`. Every claim is
        released, on error too."""
        bs = self._cache.block_size
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
                self._cache.release(done)
        except BaseException as e:
            self._cache.release([(keys[i], f, None) for i, f in pending.items()], e)
            raise

    def close(self) -> None:
        with self._lock:
            inner, self._inner = self._inner, None
            self._inner_try = None
        if inner is not None:
            inner.close()
