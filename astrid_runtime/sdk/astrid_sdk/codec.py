"""Payload conventions: bytes pass through, text is UTF-8, anything else JSON."""

from __future__ import annotations

import json
from typing import Any


def encode(value: bytes | str | Any) -> bytes:
    """The bytes to send for `value`: bytes as-is, str as UTF-8, else compact JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_text(payload: bytes) -> str:
    """The payload as text (invalid UTF-8 is replaced, never raised)."""
    return payload.decode("utf-8", errors="replace")


def decode_json(payload: bytes) -> Any:
    """The payload parsed as JSON; `ValueError` if it is not JSON."""
    return json.loads(payload.decode("utf-8"))


__all__ = ["decode_json", "decode_text", "encode"]
