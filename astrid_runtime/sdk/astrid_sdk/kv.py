"""`astrid:kernel/kv`: the plugin's own keyspace. Refusals raise `HostError`.

Values are bytes on the wire; `set` takes bytes, text or JSON-able values,
and `get_text` / `get_json` read them back.
"""

from __future__ import annotations

from typing import Any

from wit_world.imports import kv as _kv

from astrid_sdk._host import host_call
from astrid_sdk.codec import decode_json, decode_text, encode


def get(key: str) -> bytes | None:
    """The value at `key`, or None."""
    value = host_call(_kv.get, key)
    return None if value is None else bytes(value)


def get_text(key: str, default: str | None = None) -> str | None:
    """The value at `key` as UTF-8 text, or `default`."""
    value = get(key)
    return default if value is None else decode_text(value)


def get_json(key: str, default: Any = None) -> Any:
    """The value at `key` parsed as JSON, or `default`."""
    value = get(key)
    return default if value is None else decode_json(value)


def set(key: str, value: bytes | str | Any) -> None:
    """Store `value` (bytes, text, or a JSON-able value) at `key`."""
    host_call(_kv.set, key, encode(value))


def delete(key: str) -> bool:
    """Remove `key`; True if it existed."""
    return bool(host_call(_kv.delete, key))


def keys(prefix: str = "") -> list[str]:
    """Keys starting with `prefix`, sorted (the kernel caps how many come back)."""
    return [str(k) for k in host_call(_kv.list, prefix)]


__all__ = ["delete", "get", "get_json", "get_text", "keys", "set"]
