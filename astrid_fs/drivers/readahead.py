"""A read-ahead reader over any ranged fetch (S3 ranged GETs).

It knows one thing: how to turn `pread(size, offset)` calls into few, large,
overlapping range fetches. A read at the offset where the previous one ended
is sequential: the window doubles (from `min_fetch` up to `max_window`) and
up to `depth` windows beyond the read are fetched in the background, so a
large object streams while the caller consumes it. Reads within one window
of the stream position count as sequential too (concurrent readers, like
the kernel's read-ahead through FUSE, arrive slightly out of order). Any other read is random:
it fetches only what it needs (rounded up to `min_fetch`) and resets the
window, so first-byte latency stays one small request. The first read of a
reader is random too: read-ahead starts with the second read that follows
on, so opening a file to read its head (file(1), a header, `git` probing
objects) costs one small GET and leaves no prefetches behind to slow the
next file's first byte. A read that misses fetches its own range first and
starts the read-ahead only after it.

Buffered ranges ("segments") never overlap; each is a Future, so two threads
that need the same range wait for one fetch. At most `max_buffer` bytes stay
buffered (what lies behind the read position goes first). A failed fetch is
dropped, so the next read tries again; a wait never outlasts
`wait_timeout_s` — no read hangs on a dead connection.

Copies: a fetch may return any bytes-like buffer (obstore's `Bytes`, which
the Rust side filled); segments keep a memoryview of it. A read within one
segment returns a memoryview of it (no copy: the FUSE reply is written from
it); a read across segments copies the bytes it returns, once.

`try_pread` is `pread` for a caller that must not wait (the FUSE thread): it
answers only from segments already fetched, else None, and then changes
nothing (the caller's `pread` in a worker thread does the bookkeeping).

Locking: one lock guards the segment list and the window; fetches and waits
happen outside it.
"""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from astrid_fs.drivers.errors import DriverError, Timeout

log = logging.getLogger("astrid_fs.drivers")

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class ReadAheadConfig:
    """Tuning; defaults measured against s3rver here (a 64 KiB GET answers in
    about half the time of a 256 KiB one; 16 MiB windows, 4 in flight, read a
    stream fastest: docs/benchmarks.md, "S3: the open that listed the bucket,
    huge pages, read-ahead windows"). AWS advises
    ranged GETs of 8-16 MiB."""

    min_fetch: int = 64 * KIB
    max_window: int = 16 * MIB
    depth: int = 4
    max_buffer: int = 128 * MIB
    wait_timeout_s: float = 60.0


Fetch = Callable[[int, int], "bytes | memoryview"]
# What a read returns: bytes, or a read-only view of a fetched buffer.
Buffer = bytes | memoryview


@dataclass
class ReadStats:
    """What one reader did (for tests and benchmarks): ranged fetches made,
    the most running at once, the most bytes buffered at once."""

    fetches: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    peak_buffered: int = 0


@dataclass
class _Segment:
    start: int
    end: int
    future: cf.Future[memoryview]


class ReadAheadReader:
    """`pread` over `fetch(start, end) -> bytes` for an object of `size` bytes."""

    def __init__(self, fetch: Fetch, size: int,
                 executor: cf.Executor, config: ReadAheadConfig | None = None) -> None:
        self._fetch = fetch
        self.size = size
        self._executor = executor
        self._cfg = config or ReadAheadConfig()
        self._lock = threading.Lock()
        self._segs: list[_Segment] = []
        self._last_end = -1  # no read yet: the first is never sequential
        self._window = self._cfg.min_fetch
        self._closed = False
        self.stats = ReadStats()

    # ---- public ----------------------------------------------------------------

    def pread(self, size: int, offset: int) -> Buffer:
        if offset < 0 or size < 0:
            raise DriverError(f"invalid read of {size} bytes at {offset}")
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        with self._lock:
            if self._closed:
                err = DriverError("read from a closed reader")
                err.errno = errno.EBADF
                raise err
            sequential = self._advance(offset, end)
            mine: list[_Segment] = []
            covering = self._cover(offset, end, mine)
            self._evict(offset)
            if sequential and not mine:
                self._schedule_ahead(end)
        for seg in mine:
            self._fill(seg)
        if sequential and mine:
            with self._lock:
                if not self._closed:
                    self._schedule_ahead(end)
        return self._assemble(covering, offset, end)

    def try_pread(self, size: int, offset: int) -> Buffer | None:
        """`pread` from segments already fetched, or None (nothing changed)
        when that would wait for a fetch. Never blocks on I/O."""
        end = min(offset + size, self.size)
        if offset < 0 or offset >= end:
            return None
        with self._lock:
            if self._closed:
                return None
            covering = self._fetched(offset, end)
            if covering is None:
                return None
            sequential = self._advance(offset, end)
            self._evict(offset)
            if sequential:
                self._schedule_ahead(end)
        return self._assemble(covering, offset, end)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for seg in self._segs:
                seg.future.cancel()
            self._segs.clear()

    # ---- segments (call with the lock held) -------------------------------------

    def _advance(self, offset: int, end: int) -> bool:
        """Record a read of [offset, end); True if it follows the stream."""
        # Near the stream position counts as sequential: the kernel's async
        # read-ahead sends neighbouring reads from several threads, out of order.
        sequential = self._last_end >= 0 and \
            abs(offset - self._last_end) <= self._cfg.max_window
        self._window = min(self._window * 2, self._cfg.max_window) if sequential \
            else self._cfg.min_fetch
        self._last_end = max(self._last_end, end) if sequential else end
        return sequential

    def _fetched(self, offset: int, end: int) -> list[_Segment] | None:
        """Segments covering [offset, end) whose fetches all succeeded, or None."""
        out: list[_Segment] = []
        pos = offset
        i = self._index(pos)
        while pos < end:
            seg = self._segs[i] if i < len(self._segs) else None
            if seg is None or seg.start > pos or not seg.future.done() \
                    or seg.future.cancelled() or seg.future.exception() is not None:
                return None
            if len(seg.future.result()) < min(end, seg.end) - seg.start:
                return None  # a short fetch: let pread sort out the end of the object
            out.append(seg)
            pos = seg.end
            i += 1
        return out

    def _index(self, pos: int) -> int:
        """Index of the first segment whose end is beyond `pos`."""
        ends = [s.end for s in self._segs]
        return bisect.bisect_right(ends, pos)

    def _new(self, start: int, end: int, background: bool) -> _Segment:
        fut: cf.Future[memoryview] = (self._executor.submit(self._fetch_view, start, end)
                                      if background else cf.Future())
        seg = _Segment(start, end, fut)
        bisect.insort(self._segs, seg, key=lambda s: s.start)
        self.stats.peak_buffered = max(self.stats.peak_buffered, self._buffered())
        return seg

    def _cover(self, offset: int, end: int, mine: list[_Segment]) -> list[_Segment]:
        """Segments covering [offset, end), creating (unstarted) ones for the gaps."""
        out: list[_Segment] = []
        pos = offset
        i = self._index(pos)
        while pos < end:
            nxt = self._segs[i] if i < len(self._segs) else None
            if nxt is not None and nxt.start <= pos:
                out.append(nxt)
                pos = nxt.end
                i += 1
                continue
            limit = nxt.start if nxt is not None else self.size
            gap_end = min(limit, max(end, pos + self._cfg.min_fetch))
            seg = self._new(pos, gap_end, background=False)
            mine.append(seg)
            out.append(seg)
            pos = gap_end
            i = self._index(pos)
        return out

    def _schedule_ahead(self, end: int) -> None:
        target = min(self.size, end + self._cfg.depth * self._window)
        pos = end
        i = self._index(pos)
        buffered = self._buffered()
        while pos < target:
            nxt = self._segs[i] if i < len(self._segs) else None
            if nxt is not None and nxt.start <= pos:
                pos = nxt.end
                i += 1
                continue
            limit = nxt.start if nxt is not None else self.size
            seg_end = min(limit, pos + self._window)
            if buffered + seg_end - pos > self._cfg.max_buffer:
                return  # bounded: read-ahead never buffers past max_buffer
            self._new(pos, seg_end, background=True)
            buffered += seg_end - pos
            pos = seg_end
            i = self._index(pos)

    def _buffered(self) -> int:
        return sum(s.end - s.start for s in self._segs)

    def _evict(self, offset: int) -> None:
        behind = offset - self._cfg.max_window
        self._segs = [s for s in self._segs if s.end > behind or not s.future.done()]
        while self._buffered() > self._cfg.max_buffer:
            done = [s for s in self._segs if s.future.done()]
            if not done:
                return
            victim = max(done, key=lambda s: abs(s.start - offset))
            self._segs.remove(victim)

    def _drop(self, seg: _Segment) -> None:
        with self._lock:
            if seg in self._segs:
                self._segs.remove(seg)

    # ---- I/O (without the lock) ----------------------------------------------------

    def _fetch_view(self, start: int, end: int) -> memoryview:
        stats = self.stats
        with self._lock:
            stats.fetches += 1
            stats.in_flight += 1
            stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        try:
            view = memoryview(self._fetch(start, end))
        finally:
            with self._lock:
                stats.in_flight -= 1
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")

    def _fill(self, seg: _Segment) -> None:
        try:
            seg.future.set_result(self._fetch_view(seg.start, seg.end))
        except BaseException as e:
            seg.future.set_exception(e)

    def _assemble(self, covering: list[_Segment], offset: int, end: int) -> Buffer:
        parts: list[memoryview] = []
        for seg in covering:
            try:
                data = seg.future.result(timeout=self._cfg.wait_timeout_s)
            except cf.TimeoutError:
                self._drop(seg)
                err = Timeout(f"read of bytes {seg.start}-{seg.end} timed out")
                log.warning("%s (errno %d)", err, err.errno)
                raise err from None
            except cf.CancelledError:
                self._drop(seg)
                raise DriverError("read cancelled: the reader was closed") from None
            except DriverError as e:
                # Logged here, where a read fails, not where a prefetch failed
                # that nobody may need.
                self._drop(seg)
                log.warning("%s (errno %d)", e, e.errno)
                raise
            except BaseException:
                self._drop(seg)
                raise
            lo = max(offset, seg.start) - seg.start
            hi = min(end, seg.end) - seg.start
            if len(data) < hi:  # the object shrank: a short read, as at end of file
                parts.append(data[lo:])
                break
            parts.append(data[lo:hi])
        # One segment: its view, no copy (the reply is written from it).
        return parts[0] if len(parts) == 1 else b"".join(parts)
