"""The recording's store: bus events and plugin calls, in SurrealDB, in chunks.

What it promises
----------------
* Every `write` is one SurrealDB transaction holding one *chunk*: the events
  and calls the recorder gathered since its last write, so a `kill -9` of the
  kernel loses at most the chunk being written (`SURREAL_SYNC_DATA=true`:
  each commit is fsynced, as for KV). Everything a `write` returned for is
  read back after a restart.
* Retention: the store keeps the newest `max_events` events, give or take
  one chunk (a chunk is dropped whole, with its calls, once the events after
  it are at least `max_events`).
* Blocking and thread-safe: one connection behind one `threading.Lock`; a
  persistent store holds an exclusive `flock` on `<path>.lock`, so a second
  opener (another kernel, or `astrid log` while a kernel records) gets
  `RecordingBusy` and asks the kernel instead.

Why chunks and not one record per event: the SDK encodes CBOR in pure
Python (~100-200 us per small record measured here), more than a bus
delivery costs; a chunk is one `bytes` field, so a write costs one commit
however many events it holds. Reads decode the chunks in the asked range
(range over the chunk's seq bounds) and filter in Python.

The GIL. The SDK's blocking embedded connection holds the GIL for the whole
of a query, commit and fsync included (measured: a Python thread beside a
writer got half its work done, with stalls of 40-70 ms); every guest thread
and the trio loop would stop for each flush. Its async connection runs the
query on the engine's own threads and releases the GIL while it waits (the
same thread did 3-4 times the work), so the store drives that one, with a
private asyncio loop, from whichever thread calls it (one at a time: the lock).

Layout: table `chunk`, record ids `chunk:[n]` (n counts writes), fields
`n`, `ev_lo`/`ev_hi` (seq bounds of its events, -1 when none), `call_lo`/
`call_hi` (of its calls), `events` (count) and `blob`: zlib(pickle((events,
calls))), rows as `chunk.Rows` describes (why pickle, and how reading it is
restricted: chunk.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from surrealdb import (
    AsyncEmbeddedSurrealConnection,
    AsyncSurreal,
    AsyncWsSurrealConnection,
)

from astrid_runtime.errors import KernelError
from astrid_runtime.identity import read_secret
from astrid_runtime.recorder.chunk import (
    Call,
    Chunk,
    Event,
    Packed,
    RecordingError,
    Rows,
    _load,
    _receivers,
    pack,
)
from astrid_runtime.recorder.settings import (
    EMBEDDED_SCHEMES,
    SERVER_SCHEMES,
    RecordingSettings,
    scheme_problem,
)

_T = TypeVar("_T")

#: How long a SurrealDB server may take to open (connect, sign in, answer the first
#: query) before the open fails: a kernel starting up should say so, not hang.
SERVER_TIMEOUT_S: Final = 10.0

_Q_META: Final = "SELECT n, ev_lo, ev_hi, call_lo, call_hi, events FROM chunk"
#: The numbers are ours (ints), written into the text: the SDK's pure-Python CBOR
#: encoder costs ~30 us a parameter, the engine's parse of them in the text nothing
#: measurable; the blob is the one parameter.
_Q_WRITE: Final = ("CREATE chunk:[{n}] CONTENT {{n: {n}, ev_lo: {ev_lo}, ev_hi: {ev_hi}, "
                   "call_lo: {call_lo}, call_hi: {call_hi}, events: {events}, blob: $blob}} "
                   "RETURN NONE")
_Q_DROP: Final = "DELETE chunk:[0]..=[$n] RETURN NONE"
_Q_READ: Final = ("SELECT n, blob FROM chunk WHERE (ev_hi >= $lo AND ev_lo <= $hi) "
                  "OR (call_hi >= $lo AND call_lo <= $hi) ORDER BY n")


class RecordingBusy(RecordingError):
    """Another process (a running kernel) holds the recording: ask it instead."""


@dataclass
class _ChunkMeta:
    n: int
    ev_hi: int
    call_hi: int
    events: int


class Store(Protocol):
    """What the recorder and the queries use: a `RecordingStore`, or the same in the
    writer process (`writer.StoreProcess`)."""

    url: str
    max_events: int

    def last_seq(self) -> int: ...
    def write(self, chunk: Rows) -> None: ...
    def read(self, lo: int = 0, hi: int = 2**62) -> Chunk: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...


def default_url(home: Path) -> str:
    return f"surrealkv://{home / 'recording'}"


def open_store(settings: RecordingSettings, home: Path) -> RecordingStore:
    """The store `settings` name (`surrealkv://HOME/recording` by default), signed in
    with its credentials when it is a server. Blocking."""
    url, password = store_target(settings, home)
    return RecordingStore(url, max_events=settings.max_events, username=settings.username,
                          password=password)


def store_target(settings: RecordingSettings, home: Path) -> tuple[str, str | None]:
    """The store's URL and the password to sign in with (read from its file)."""
    password = None
    if settings.password_file is not None:
        try:
            password = read_secret(settings.password_file)
        except KernelError as e:
            raise RecordingError(f"the recording's password_file {e}") from None
    return settings.url or default_url(home), password


class RecordingStore:
    """The recording in SurrealDB (see the module docstring). Blocking."""

    def __init__(self, url: str, *, max_events: int = 100_000, username: str | None = None,
                 password: str | None = None, server_timeout: float = SERVER_TIMEOUT_S,
                 principal: int | None = None) -> None:
        """`principal`: the pid this recording belongs to, written in its lock file (by
        default this process; the writer process names its kernel)."""
        self.url = url
        self.max_events = max_events
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        problem = scheme_problem(url)
        if problem is not None:
            raise RecordingError(f"cannot open the recording {url}: the url {problem}")
        scheme, _, rest = url.partition("://")
        scheme = scheme.lower()
        if scheme in EMBEDDED_SCHEMES:
            # Read by the engine once per process, at its first start (as kv.py).
            os.environ["SURREAL_SYNC_DATA"] = "true"
        if scheme in ("surrealkv", "file"):
            self._lock_fd = _take_lock(Path(rest), principal or os.getpid())
        self._loop = asyncio.new_event_loop()
        try:
            db: Any = AsyncSurreal(url)
            opening = self._open(db, username, password)
            if scheme in SERVER_SCHEMES:  # a server that never answers fails the open
                opening = asyncio.wait_for(opening, server_timeout)
            rows = self._run(opening)
        except Exception as e:
            self._loop.close()
            self._release()
            why = (f"no answer in {server_timeout:g} s" if isinstance(e, TimeoutError)
                   else " ".join(str(e).split()) or type(e).__name__)
            raise RecordingError(f"cannot open the recording {url}: {why}") from e
        self._db = db
        self._chunks = deque(sorted((_ChunkMeta(r["n"], r["ev_hi"], r["call_hi"], r["events"])
                                     for r in rows), key=lambda c: c.n))
        #: Events in `_chunks` (kept, not summed per write: a store may hold 100,000 chunks).
        self._events = sum(c.events for c in self._chunks)
        self._closed = False

    @staticmethod
    async def _open(db: Any, username: str | None, password: str | None) -> Any:
        """Connect, sign in (a server), choose the database, read the chunks' bounds."""
        if isinstance(db, AsyncEmbeddedSurrealConnection | AsyncWsSurrealConnection):
            await db.connect()
        if username is not None:
            await db.signin({"username": username, "password": password or ""})
        await db.use("astrid", "recording")
        return await db.query(_Q_META) or []

    # -- writing -----------------------------------------------------------

    def last_seq(self) -> int:
        """The highest sequence number stored (0 when empty): a restarted kernel goes on
        from the next one."""
        return max((max(c.ev_hi, c.call_hi) for c in self._chunks), default=0)

    def write(self, chunk: Rows) -> None:
        """Store `chunk` in one transaction (durable when this returns), then apply
        retention."""
        packed = pack(chunk)
        if packed is not None:
            self.write_packed(packed)

    def write_packed(self, packed: Packed) -> None:
        """`write` of a chunk `pack` made (the writer process gets chunks this way)."""
        # zlib level 1 costs less CPU than the engine spends writing the bytes it saves
        # (and releases the GIL while it works).
        blob = zlib.compress(packed.raw, 1)
        with self._lock:
            self._check_open()
            n = self._chunks[-1].n + 1 if self._chunks else 1
            self._query(_Q_WRITE.format(n=int(n), ev_lo=int(packed.ev_lo),
                                        ev_hi=int(packed.ev_hi), call_lo=int(packed.call_lo),
                                        call_hi=int(packed.call_hi),
                                        events=int(packed.events)), {"blob": blob})
            self._chunks.append(_ChunkMeta(n, packed.ev_hi, packed.call_hi, packed.events))
            self._events += packed.events
            self._retain()

    def _retain(self) -> None:
        total, drop = self._events, 0
        while drop < len(self._chunks) - 1 and total - self._chunks[drop].events >= \
                self.max_events:
            total -= self._chunks[drop].events
            drop += 1
        if drop:  # the store first: a failed delete leaves both as they were
            self._query(_Q_DROP, {"n": self._chunks[drop - 1].n})
            for _ in range(drop):
                self._chunks.popleft()
            self._events = total

    # -- reading -----------------------------------------------------------

    def read(self, lo: int = 0, hi: int = 2**62) -> Chunk:
        """Events and calls whose seq is in [lo, hi], in seq order."""
        with self._lock:
            self._check_open()
            rows = self._query(_Q_READ, {"lo": lo, "hi": hi}) or []
        out = Chunk()
        for row in rows:
            events, calls = _load(row["blob"])
            out.events += [Event(e[0], e[1], e[2], e[3], e[4], e[5], _receivers(e))
                           for e in events if lo <= e[0] <= hi]
            out.calls += [Call.from_row(c) for c in calls if lo <= c[0] <= hi]
        out.events.sort(key=lambda e: e.seq)
        out.calls.sort(key=lambda c: (c.seq, c.plugin))
        return out

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"chunks": len(self._chunks), "events": self._events,
                    "last_seq": self.last_seq()}

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._run(self._db.close())
            finally:
                self._loop.close()
                self._release()

    def _check_open(self) -> None:
        if self._closed:
            raise RecordingError(f"the recording {self.url} is closed")

    def _run(self, step: Coroutine[Any, Any, _T]) -> _T:
        """Run one SDK call to its end in this thread, the GIL released while the
        engine works (see the module docstring). Callers hold `_lock` (or own the
        store, while opening it)."""
        return self._loop.run_until_complete(step)

    def _query(self, text: str, params: dict[str, Any]) -> Any:
        try:
            return self._run(self._db.query(text, params))
        except Exception as e:
            raise RecordingError(f"recording {self.url}: {type(e).__name__}: {e}") from e

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _take_lock(path: Path, principal: int) -> int:
    """The store's `flock`, its file naming `principal` (the pid whose recording this
    is: a kernel, or the CLI reading it). A holder whose principal is gone is a writer
    process finishing the chunks of a kernel killed with -9 (writer.py): wait for it,
    up to `ORPHAN_WAIT_S`. Any other holder: `RecordingBusy` at once."""
    path = path.expanduser()
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise RecordingError(f"cannot open the recording at {path}: {e}") from e
    deadline: float | None = None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = _principal(fd)
            if deadline is None:
                deadline = time.monotonic() + ORPHAN_WAIT_S
            if holder is None or _alive(holder) or time.monotonic() > deadline:
                os.close(fd)
                raise RecordingBusy(f"the recording at {path} is held by a running kernel"
                                    ) from None
            time.sleep(0.01)  # a lock has no wait-with-timeout; the writer is finishing
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{principal}\n".encode(), 0)
    return fd


#: How long an opener waits for the writer process of a kernel that died (its last
#: chunks: normally milliseconds; a slow disk's fsync at most).
ORPHAN_WAIT_S: Final = 30.0


def _principal(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None  # being written, or an older kernel's empty lock file


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
