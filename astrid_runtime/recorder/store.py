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

Why pickle inside the chunk, not JSON: the recorder's cost per message is
what it spends turning rows into bytes, and JSON (rows of base64 and tagged
ABI values) cost ~10-20 us per event here against ~1 us for pickle, which
takes the raw rows (payload bytes, the `Ok`/`Err`/`Case` values the host
functions returned) as they are. Reading is restricted (`_Rows.find_class`):
the only globals a chunk may name are those three value classes, so a
tampered store (a shared SurrealDB server) cannot make `astrid log` run
code; anything else is refused as a corrupt chunk.

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
calls))), rows as `Rows` describes.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import io
import os
import pickle
import threading
import time
import zlib
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol, TypeVar

from surrealdb import (
    AsyncEmbeddedSurrealConnection,
    AsyncSurreal,
    AsyncWsSurrealConnection,
)

from astrid_runtime.abi.canon import Case, Err, Ok
from astrid_runtime.errors import KernelError
from astrid_runtime.identity import read_secret
from astrid_runtime.recorder.settings import (
    EMBEDDED_SCHEMES,
    SERVER_SCHEMES,
    RecordingSettings,
    scheme_problem,
)
from astrid_runtime.recorder.values import encode

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


class RecordingError(KernelError):
    """The recording store failed or cannot be opened."""


class RecordingBusy(RecordingError):
    """Another process (a running kernel) holds the recording: ask it instead."""


@dataclass(frozen=True)
class Event:
    """One bus delivery as the kernel saw it."""

    seq: int
    time: float
    topic: str
    #: The sender as the kernel stamped it: plugin (or client/kernel) and its kernel
    #: key when it came over the bridge.
    sender: str
    sender_kernel: str | None
    payload: bytes
    #: Plugins whose mailboxes took it (taps are not counted).
    receivers: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "t": self.time, "topic": self.topic, "sender": self.sender,
                "kernel": self.sender_kernel, "to": list(self.receivers),
                "payload": base64.b64encode(self.payload).decode()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Event:
        return cls(d["seq"], d["t"], d["topic"], d["sender"], d.get("kernel"),
                   base64.b64decode(d["payload"]), tuple(d["to"]))



@dataclass(frozen=True)
class HostCall:
    """One host call a plugin made while handling a message, and what it got back
    (both encoded by `recorder.values`)."""

    name: str
    args: list[Any]
    result: Any

    def to_json(self) -> list[Any]:
        return [self.name, self.args, self.result]


@dataclass(frozen=True)
class Call:
    """One plugin's handling of one delivered message."""

    seq: int
    plugin: str
    version: str
    #: `ok`, `error` (the plugin returned err) or `crash` (trap, fuel, deadline, memory).
    outcome: str
    detail: str
    host: tuple[HostCall, ...] = ()
    #: Files the call changed through the VFS (paths as the plugin named them).
    wrote: tuple[str, ...] = ()
    #: The astrid-fs snapshot taken after the call wrote files (None: none taken).
    snapshot: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "plugin": self.plugin, "version": self.version,
                "outcome": self.outcome, "detail": self.detail,
                "host": [h.to_json() for h in self.host], "wrote": list(self.wrote),
                "snapshot": self.snapshot}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Call:
        return cls(d["seq"], d["plugin"], d["version"], d["outcome"], d["detail"],
                   tuple(HostCall(*h) for h in d["host"]), tuple(d.get("wrote", ())),
                   d.get("snapshot"))

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Call:
        """From a stored row (`Rows`): the host calls' values encoded now."""
        if type(row[5]) is int and row[5] == FLAT_ROW:
            return cls._from_flat(row)
        seq, plugin, version, outcome, detail, host, wrote, snapshot = row
        if isinstance(host, bytes):  # pickled by the recorder (older chunks: a list)
            host = _unpickle(host)
        return cls(seq, plugin, version, outcome, detail,
                   tuple(HostCall(h[0], encode(h[1]), encode(_answer(h))) for h in host),
                   tuple(wrote), snapshot)


    @classmethod
    def _from_flat(cls, row: tuple[Any, ...]) -> Call:
        """From a flat row (recorder.py `_call_row`)."""
        try:
            seq, plugin, version, outcome, detail, _flat, snapshot, n_wrote = row[:8]
            at = 8 + n_wrote
            wrote = row[8:at]
            calls = []
            while at < len(row):
                name, kind, value, n_args = row[at:at + 4]
                args = list(row[at + 4:at + 4 + n_args])
                if len(args) != n_args:
                    raise ValueError("short host call")
                at += 4 + n_args
                calls.append(HostCall(name, encode(args),
                                      encode(_answer((name, args, kind, value)))))
        except (TypeError, ValueError) as e:
            raise RecordingError(f"a corrupt recording chunk: a call row: {e}") from e
        return cls(seq, plugin, version, outcome, detail, tuple(calls), tuple(wrote),
                   snapshot)


@dataclass
class _ChunkMeta:
    n: int
    ev_hi: int
    call_hi: int
    events: int


@dataclass
class Chunk:
    """What `read` returns."""

    events: list[Event] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)


@dataclass
class Rows:
    """What one `write` stores, raw (encoding happens on reading, which is rare):
    events `(seq, time, topic, sender, sender_kernel, payload, *receivers)` and calls
    laid out flat (recorder.py `_call_row`, since 2026-12-01 20:45) or
    `(seq, plugin, version, outcome, detail, host, wrote, snapshot)`, `host` being
    `[(name, args, kind, answer)...]` (`_answer`) with the ABI values as the host
    functions saw them, pickled (`bytes`). Both are flat so that the garbage collector untracks them
    (recorder.py). Chunks written before 2026-12-01 16:00 hold the receivers as one
    list and the host calls as the list itself; both are still read."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    calls: list[tuple[Any, ...]] = field(default_factory=list)


class Packed(NamedTuple):
    """A chunk ready to store: its rows pickled, and their seq bounds (-1: none)."""

    raw: bytes
    ev_lo: int
    ev_hi: int
    call_lo: int
    call_hi: int
    events: int


def pack(chunk: Rows) -> Packed | None:
    """`chunk` as `write_packed` takes it (None when it is empty)."""
    if not chunk.events and not chunk.calls:
        return None
    raw = pickle.dumps((chunk.events, chunk.calls), protocol=5)
    ev = [e[0] for e in chunk.events] or [-1]
    ca = [c[0] for c in chunk.calls] or [-1]
    return Packed(raw, min(ev), max(ev), min(ca), max(ca), len(chunk.events))


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


class _Rows(pickle.Unpickler):
    """Unpickles a chunk and nothing else (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "astrid_runtime.abi.canon" and name in ("Ok", "Err", "Case"):
            return {"Ok": Ok, "Err": Err, "Case": Case}[name]
        raise pickle.UnpicklingError(f"a recording chunk may not name {module}.{name}")


#: The sixth field of a call row laid out flat (recorder.py `_call_row`); a row with its
#: host calls pickled has `bytes` there (a list before 2026-12-01 16:00).
FLAT_ROW: Final = -1

#: How a stored host call's answer was kept: `(name, args, HOST_OK, x)` is `Ok(x)`
#: (recorder.py `_pickled`); older rows are `(name, args, answer)`.
HOST_PLAIN: Final = 0
HOST_OK: Final = 1
HOST_ERR: Final = 2


def _answer(host_call: tuple[Any, ...]) -> Any:
    if len(host_call) == 3:
        return host_call[2]
    _name, _args, kind, value = host_call
    if kind == HOST_OK:
        return Ok(value)
    if kind == HOST_ERR:
        return Err(value)
    if kind == HOST_PLAIN:
        return value
    raise RecordingError(f"a corrupt recording chunk: host answer kind {kind!r}")


def _receivers(row: tuple[Any, ...]) -> tuple[str, ...]:
    """An event row's receivers: the rest of the row (older chunks: one list)."""
    if len(row) == 7 and isinstance(row[6], list):
        return tuple(row[6])
    return tuple(row[6:])


def _unpickle(blob: bytes) -> Any:
    try:
        return _Rows(io.BytesIO(blob)).load()
    except Exception as e:
        raise RecordingError(f"a corrupt recording chunk: {e}") from e


def _load(blob: bytes) -> tuple[list[Any], list[Any]]:
    try:
        raw = zlib.decompress(blob)
    except zlib.error as e:
        raise RecordingError(f"a corrupt recording chunk: {e}") from e
    rows = _unpickle(raw)
    if not (isinstance(rows, tuple) and len(rows) == 2):
        raise RecordingError("a corrupt recording chunk: not (events, calls)")
    return rows[0], rows[1]


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
