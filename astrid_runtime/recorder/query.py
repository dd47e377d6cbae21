"""Questions to the recording (`astrid log`, `astrid show`, `astrid replay`), answered
the same way in a running kernel (control op `recording.query`) and from the store
directly when no kernel holds it. Requests and replies are JSON objects:

    {"op": "recording.query", "topic": PATTERN, "plugin": NAME, "from": SEQ, "to": SEQ,
     "since": UNIX_T, "until": UNIX_T, "limit": N, "host": BOOL}
        -> {"ok": true, "events": [EVENT + {"calls": [CALL...]}...], "stats": {...}}

An event matches `plugin` when the plugin sent or received it; `limit` keeps
the newest N matches; `host` includes each call's host calls (`astrid show`).
"""

from __future__ import annotations

from typing import Any

from astrid_runtime.bus.topics import match_tokens, validate_pattern, validate_topic
from astrid_runtime.errors import ControlError
from astrid_runtime.recorder.chunk import Call
from astrid_runtime.recorder.store import Store


def _int(request: dict[str, Any], key: str, default: int | None) -> int | None:
    value = request.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ControlError(f"{key} must be a number")
    return None if value is None else int(value)


def _call_json(call: Call, host: bool) -> dict[str, Any]:
    body = call.to_json()
    if not host:
        del body["host"]
    return body


def answer(store: Store, request: dict[str, Any]) -> dict[str, Any]:
    """Blocking: the events matching `request` (see the module docstring)."""
    lo = _int(request, "from", 0) or 0
    hi = _int(request, "to", None)
    limit = _int(request, "limit", None)
    top = hi if hi is not None else store.last_seq()
    # The newest `limit` matches are what `astrid log` asks for: read back from the end
    # in widening spans instead of decoding the whole store.
    span = max(4 * limit, 1024) if limit else None
    while True:
        start = lo if span is None else max(lo, top - span)
        out = _matching(store, request, start, top)
        if span is None or start <= lo or len(out) >= (limit or 0):
            break
        span *= 4
    if limit is not None:
        out = out[-limit:] if limit > 0 else []
    return {"ok": True, "events": out, "stats": store.stats()}


def _matching(store: Store, request: dict[str, Any], lo: int,
              hi: int) -> list[dict[str, Any]]:
    since, until = request.get("since"), request.get("until")
    pattern = request.get("topic")
    tokens = validate_pattern(pattern) if isinstance(pattern, str) and pattern else None
    plugin = request.get("plugin")
    host = bool(request.get("host"))
    chunk = store.read(lo, hi)
    calls: dict[int, list[Call]] = {}
    for call in chunk.calls:
        calls.setdefault(call.seq, []).append(call)
    out: list[dict[str, Any]] = []
    for event in chunk.events:
        if tokens is not None and not match_tokens(tokens, validate_topic(event.topic)):
            continue
        if isinstance(since, int | float) and event.time < since:
            continue
        if isinstance(until, int | float) and event.time > until:
            continue
        if isinstance(plugin, str) and plugin and plugin != event.sender \
                and plugin not in event.receivers:
            continue
        body = event.to_json()
        body["calls"] = [_call_json(c, host) for c in calls.get(event.seq, ())
                         if not (isinstance(plugin, str) and plugin and c.plugin != plugin
                                 and plugin != event.sender)]
        out.append(body)
    return out
