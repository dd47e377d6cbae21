"""ABI values <-> JSON: how host-call arguments and results are kept in a recording.

A host function's lifted arguments and its result are plain Python values
(`str`, `bytes`, `int`, tuples for records and tuples, lists, `frozenset`
for flags) wrapped in `Ok`/`Err`/`Case` from `abi.canon`. `encode` turns one
into JSON-able data that `decode` turns back into an equal value, so a replay
can hand the guest exactly what the kernel answered (the codec that lowers
it sees the same Python types). Pure functions: no trio, no wasmtime calls.
"""

from __future__ import annotations

import base64
from typing import Any

from astrid_runtime.abi.canon import Case, Err, Ok

_PLAIN = (str, int, bool, float, type(None))


def encode(value: Any) -> Any:
    """JSON-able data for an ABI value; `decode(encode(v)) == v`."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is list:
        return [v if type(v) in _PLAIN else encode(v) for v in value]
    if kind is bytes:
        return {"b": base64.b64encode(value).decode()}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, Ok):
        return {"ok": encode(value.value)}
    if isinstance(value, Err):
        return {"err": encode(value.value)}
    if isinstance(value, Case):
        return {"case": value.tag, "v": encode(value.payload)}
    if isinstance(value, tuple):
        return {"t": [encode(v) for v in value]}
    if isinstance(value, frozenset | set):
        return {"fs": sorted(encode(v) for v in value)}
    if isinstance(value, list):
        return [encode(v) for v in value]
    return {"repr": repr(value)}


def decode(data: Any) -> Any:
    """The ABI value `encode` was given (a `repr` fallback comes back as its text)."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "b" in data:
        return base64.b64decode(data["b"])
    if "ok" in data:
        return Ok(decode(data["ok"]))
    if "err" in data:
        return Err(decode(data["err"]))
    if "case" in data:
        return Case(data["case"], decode(data["v"]))
    if "t" in data:
        return tuple(decode(v) for v in data["t"])
    if "fs" in data:
        return frozenset(decode(v) for v in data["fs"])
    return data.get("repr")


def readable(data: Any) -> Any:
    """An encoded value for people (`astrid show`): bytes as text where they are text."""
    if isinstance(data, list):
        return [readable(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "b" in data:
        raw = base64.b64decode(data["b"])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + data["b"]
        return text if text.isprintable() or text == "" else repr(text)
    if "ok" in data:
        return {"ok": readable(data["ok"])}
    if "err" in data:
        return {"err": readable(data["err"])}
    if "case" in data:
        return {data["case"]: readable(data["v"])}
    if "t" in data:
        return [readable(v) for v in data["t"]]
    if "fs" in data:
        return sorted(data["fs"])
    return data.get("repr")
