"""A recording chunk: the rows one `write` stores, and what a `read` gives back.

`Rows` is what the recorder gathered since its last write, raw; `pack` pickles
it (with its seq bounds) for the store (`store.py`, which keeps it compressed
in SurrealDB); `_load` turns a stored blob back into rows, and `Event`,
`Call.from_row` and `Chunk` are what reading makes of them. No SurrealDB, no
trio here: only the chunk's format.

Why pickle inside the chunk, not JSON: the recorder's cost per message is
what it spends turning rows into bytes, and JSON (rows of base64 and tagged
ABI values) cost ~10-20 us per event here against ~1 us for pickle, which
takes the raw rows (payload bytes, the `Ok`/`Err`/`Case` values the host
functions returned) as they are. Reading is restricted (`_Rows.find_class`):
the only globals a chunk may name are those three value classes, so a
tampered store (a shared SurrealDB server) cannot make `astrid log` run
code; anything else is refused as a corrupt chunk.
"""

from __future__ import annotations

import base64
import io
import pickle
import zlib
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from astrid_runtime.abi.canon import Case, Err, Ok
from astrid_runtime.errors import KernelError
from astrid_runtime.recorder.values import encode


# Here, not in store.py, because decoding a corrupt chunk raises it too.
class RecordingError(KernelError):
    """The recording store failed or cannot be opened."""


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
