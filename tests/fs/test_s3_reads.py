"""Reads from S3: ranged GETs with read-ahead (drivers/readahead.py) and the
block cache over them (drivers/cache.py), against a real s3rver on
127.0.0.1 (tests/fs/s3_fixture.py). What must hold: the bytes are the
object's at any offset and size, a sequential stream runs several ranged
GETs at once within a bounded buffer, the first read is not queued behind
read-ahead, and an object replaced mid-read fails the read (ESTALE) instead
of mixing versions."""
# ruff: noqa: F811  (fixtures imported from s3_fixture are parameters here)

from __future__ import annotations

import concurrent.futures as cf
import errno
import hashlib
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from astrid_fs.drivers.base import LowerDriver, Reader, TryReader
from astrid_fs.drivers.cache import CacheConfig, CachingDriver
from astrid_fs.drivers.errors import Stale
from astrid_fs.drivers.readahead import KIB, MIB, ReadAheadConfig, ReadAheadReader
from tests.fs.s3_fixture import S3Target, s3, s3_server  # noqa: F401


def _blob(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _driver(s3: S3Target, cached: bool) -> LowerDriver:
    drv = s3.driver()
    return CachingDriver(drv, CacheConfig(data_bytes=4 * MIB)) if cached else drv


def test_large_object_streams_with_ranged_gets(s3: S3Target) -> None:
    body = _blob(64 * MIB)
    s3.put("big.bin", body)
    drv = s3.driver()
    ranged_before = s3.server.count(r" 206 ")
    reader = drv.open_reader("big.bin")
    digest = hashlib.sha256()
    offset = 0
    while chunk := reader.pread(128 * 1024, offset):
        digest.update(chunk)
        offset += len(chunk)
    reader.close()
    assert offset == len(body)
    assert digest.digest() == hashlib.sha256(body).digest()
    ranged = s3.server.count(r" 206 ") - ranged_before
    # Windows grow to 8 MiB: several ranged GETs, far fewer than 512 reads.
    assert 8 <= ranged <= 64


@pytest.mark.parametrize("cached", [False, True])
def test_range_reads_anywhere(s3: S3Target, cached: bool) -> None:
    body = _blob(3 * MIB + 17, seed=2)
    s3.put("r.bin", body)
    drv = _driver(s3, cached)
    reader = drv.open_reader("r.bin", drv.stat("r.bin"))
    rng = random.Random(3)
    cases = [(0, 1), (len(body) - 1, 10), (len(body), 5), (len(body) + 100, 5),
             (MIB - 3, 7), (0, len(body) + 10)]
    cases += [(rng.randrange(len(body)), rng.randrange(1, 300_000)) for _ in range(40)]
    # Block-aligned and block-spanning reads (the cache's 256 KiB blocks),
    # and the last block, short, read whole and in part.
    cases += [(256 * KIB, MIB), (256 * KIB - 1, 2), (3 * MIB, 256 * KIB), (3 * MIB + 16, 1)]
    for offset, size in cases:
        assert reader.pread(size, offset) == body[offset:offset + size], (offset, size)
    reader.close()


@pytest.mark.parametrize("cached", [False, True])
def test_one_reader_from_many_threads(s3: S3Target, cached: bool) -> None:
    body = _blob(8 * MIB, seed=4)
    s3.put("t.bin", body)
    drv = _driver(s3, cached)
    reader = drv.open_reader("t.bin")
    failures: list[tuple[int, int]] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(30):
            offset, size = rng.randrange(len(body)), rng.randrange(1, 200_000)
            if reader.pread(size, offset) != body[offset:offset + size]:
                failures.append((offset, size))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader.close()
    assert failures == []


def test_object_replaced_under_open_reader_is_stale(s3: S3Target) -> None:
    s3.put("v.bin", _blob(16 * MIB, seed=5))
    drv = s3.driver()
    reader = drv.open_reader("v.bin")
    assert len(reader.pread(4096, 0)) == 4096
    s3.put("v.bin", _blob(16 * MIB, seed=6))
    with pytest.raises(Stale) as info:  # beyond what read-ahead buffered
        reader.pread(4096, 12 * MIB + 12345)
    assert info.value.errno == errno.ESTALE
    reader.close()


def test_data_cache_serves_a_second_read_without_requests(s3: S3Target) -> None:
    body = _blob(5 * MIB + 1, seed=10)
    s3.put("d.bin", body)
    drv = CachingDriver(s3.driver(), CacheConfig(data_bytes=16 * MIB))
    for _ in range(2):
        # (The driver's own miss count, not the server's log: the server
        # writes its log lines asynchronously, so counting them races.)
        misses = drv.counters.data_misses
        reader = drv.open_reader("d.bin")
        got = b"".join(reader.pread(MIB, off) for off in range(0, len(body), MIB))
        reader.close()
        assert got == body
    assert drv.counters.data_misses == misses  # the second pass fetched nothing
    assert drv.counters.data_hits >= 6


def test_try_pread_answers_only_from_what_was_fetched(s3: S3Target) -> None:
    # The FUSE thread calls try_pread (fuse/ops.py): it must never fetch or
    # wait, answer exactly what pread would once the bytes are there, and
    # hand back a view of the fetched buffer rather than a copy.
    body = _blob(6 * MIB, seed=14)
    s3.put("t.bin", body)
    drv = s3.driver()
    reader = drv.open_reader("t.bin", drv.stat("t.bin"))
    assert isinstance(reader, ReadAheadReader)
    assert reader.try_pread(MIB, 0) is None and reader.stats.fetches == 0
    assert bytes(reader.pread(64 * KIB, 0)) == body[:64 * KIB]
    assert bytes(reader.pread(64 * KIB, 64 * KIB)) == body[64 * KIB:128 * KIB]  # read-ahead starts
    cf.wait([seg.future for seg in reader._segs])
    fetches = reader.stats.fetches
    got = reader.try_pread(128 * KIB, 128 * KIB)
    assert isinstance(got, memoryview) and bytes(got) == body[128 * KIB:256 * KIB]
    assert reader.stats.fetches >= fetches  # (it may start more read-ahead, never wait)
    assert reader.try_pread(MIB, 5 * MIB) is None  # far ahead: not fetched
    reader.close()
    assert reader.try_pread(64 * KIB, 0) is None


def test_cached_reads_are_views_and_the_bound_counts_whole_buffers(s3: S3Target) -> None:
    body = _blob(12 * MIB + 5, seed=15)
    s3.put("v.bin", body)
    bound = 3 * MIB
    drv = CachingDriver(s3.driver(read_window_mib=2), CacheConfig(data_bytes=bound))
    reader = drv.open_reader("v.bin")
    assert isinstance(reader, TryReader)
    got = []
    for off in range(0, len(body), MIB):
        got.append(bytes(reader.pread(MIB, off)))
        # Blocks keep their read-ahead segment alive: counted whole, bounded.
        assert drv.blocks._block_bytes <= bound
        assert drv.blocks._block_bytes == sum(n for _, n in drv.blocks._owners.values())
    assert b"".join(got) == body
    # The last blocks are cached: try_pread answers from them, as one view
    # when they lie side by side in one buffer, across blocks too.
    tail = len(body) - MIB - 5
    hit = reader.try_pread(MIB, tail)
    assert hit is not None and bytes(hit) == body[tail:tail + MIB]
    assert reader.try_pread(MIB, 0) is None  # evicted long ago; never fetched here
    reader.close()




def _stream(reader: Reader, chunk: int, until: int | None = None,
            on_chunk: Callable[[int], None] | None = None) -> tuple[bytes, int]:
    """Read sequentially in `chunk`-sized reads; (digest, bytes read)."""
    digest = hashlib.sha256()
    offset = 0
    while until is None or offset < until:
        got = reader.pread(chunk, offset)
        if not got:
            break
        digest.update(got)
        offset += len(got)
        if on_chunk is not None:
            on_chunk(offset)
    return digest.digest(), offset


def test_sequential_stream_runs_ranged_gets_in_parallel_within_its_buffer(
        s3: S3Target) -> None:
    body = _blob(48 * MIB, seed=11)
    s3.put("p.bin", body)
    drv = s3.driver(read_window_mib=4, read_depth=4, threads=6)
    reader = drv.open_reader("p.bin")
    assert isinstance(reader, ReadAheadReader)
    digest, size = _stream(reader, MIB)  # 1 MiB: what the mount's read-ahead sends
    reader.close()
    assert (digest, size) == (hashlib.sha256(body).digest(), len(body))
    stats = reader.stats
    # Several GETs ran at once, never more than the driver's threads plus
    # the reader's own, and the read-ahead never held more than its bound.
    assert 2 <= stats.peak_in_flight <= 6 + 1
    assert stats.peak_buffered <= max(64 * MIB, 2 * 4 * 4 * MIB)
    assert 48 // 4 <= stats.fetches <= 48


def test_read_ahead_buffer_is_bounded(s3: S3Target) -> None:
    body = _blob(24 * MIB, seed=12)
    s3.put("b.bin", body)
    drv = s3.driver()
    etag = drv.stat("b.bin")
    assert etag is not None
    config = ReadAheadConfig(max_window=2 * MIB, depth=8, max_buffer=5 * MIB)
    with cf.ThreadPoolExecutor(8) as pool:
        inner = drv.open_reader("b.bin", etag)
        assert isinstance(inner, ReadAheadReader)
        inner.close()
        reader = ReadAheadReader(inner._fetch, len(body), pool, config)
        digest, _ = _stream(reader, 512 * KIB)
        reader.close()
    assert digest == hashlib.sha256(body).digest()
    # Depth 8 of 2 MiB windows would be 16 MiB ahead: the bound cut it to 5.
    assert 2 * MIB < reader.stats.peak_buffered <= 5 * MIB


class _LoggingPool(cf.ThreadPoolExecutor):
    """Records each read-ahead submission in the shared event log."""

    def __init__(self, events: list[tuple[str, int]]) -> None:
        super().__init__(4)
        self.events = events

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        self.events.append(("read-ahead", args[0]))
        return super().submit(fn, *args, **kwargs)


def test_first_read_is_one_small_get_and_read_ahead_waits_for_a_second(
        s3: S3Target) -> None:
    body = _blob(8 * MIB, seed=13)
    s3.put("f.bin", body)
    drv = s3.driver()
    inner = drv.open_reader("f.bin", drv.stat("f.bin"))
    assert isinstance(inner, ReadAheadReader)
    inner.close()
    events: list[tuple[str, int]] = []
    caller = threading.get_ident()

    def fetch(start: int, end: int) -> bytes | memoryview:
        events.append(("fetch" if threading.get_ident() == caller else "bg-fetch", start))
        return inner._fetch(start, end)

    with _LoggingPool(events) as pool:
        reader = ReadAheadReader(fetch, len(body), pool)
        # Opening a file to read its head: one small GET, no read-ahead left
        # running to compete with the next file's first byte.
        assert reader.pread(4096, 0) == body[:4096]
        assert events == [("fetch", 0)]
        # The read that follows on is sequential: the caller's own range first
        # (it was not fetched yet), read-ahead queued after it.
        assert reader.pread(128 * KIB, 64 * KIB) == body[64 * KIB:192 * KIB]
        reader.close()
    assert events[1] == ("fetch", 64 * KIB)
    assert [e for e in events[2:] if e[0] == "read-ahead"], events


@pytest.mark.parametrize("cached", [False, True])
def test_object_replaced_mid_stream_fails_without_mixing_versions(
        s3: S3Target, cached: bool) -> None:
    old, new = _blob(40 * MIB, seed=14), _blob(40 * MIB, seed=15)
    s3.put("m.bin", old)
    drv = _driver(s3, cached)
    reader = drv.open_reader("m.bin", drv.stat("m.bin"))
    replaced = False
    offset = 0

    with pytest.raises(Stale) as info:
        while True:
            got = reader.pread(MIB, offset)
            assert got, "reached the end: the replacement was never noticed"
            # Every byte a read returned is the old version's.
            assert got == old[offset:offset + len(got)], offset
            offset += len(got)
            if offset >= 4 * MIB and not replaced:
                s3.put("m.bin", new)
                replaced = True
    assert replaced and info.value.errno == errno.ESTALE
    reader.close()
