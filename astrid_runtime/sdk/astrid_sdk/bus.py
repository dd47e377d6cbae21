"""`astrid:kernel/bus`: publish and subscribe. Refusals raise `HostError`."""

from __future__ import annotations

from typing import Any

from wit_world.imports import bus as _bus

from astrid_sdk._host import host_call
from astrid_sdk.codec import encode


def publish(topic: str, payload: bytes | str | Any) -> None:
    """Publish `payload` (bytes, text, or a JSON-able value) on `topic`.

    The topic must lie inside the plugin's `publish` grant (`HostError('denied')`).
    """
    host_call(_bus.publish, topic, encode(payload))


def subscribe(pattern: str) -> int:
    """Subscribe to `pattern`; messages arrive through the plugin's handlers."""
    return int(host_call(_bus.subscribe, pattern))


def unsubscribe(subscription: int) -> None:
    """Drop a subscription made by `subscribe`."""
    host_call(_bus.unsubscribe, subscription)


__all__ = ["publish", "subscribe", "unsubscribe"]
