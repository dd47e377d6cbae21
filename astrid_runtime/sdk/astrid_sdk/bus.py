"""`astrid:kernel/bus`: publish and subscribe. Refusals raise `HostError`."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Sender:
    """Who published a message, as the kernel saw it (a plugin cannot forge it).

    `plugin` is the publisher's name (`client` for `astrid publish`, `kernel`
    for the kernel); `kernel` is None on this kernel, else the hex ed25519 key
    of the kernel the message was bridged from.
    """

    plugin: str
    kernel: str | None = None

    @property
    def local(self) -> bool:
        return self.kernel is None


def sender() -> Sender | None:
    """The sender of the message being delivered now (None outside a handler)."""
    found = host_call(_bus.current_sender)
    return None if found is None else Sender(str(found.plugin), found.kernel)


__all__ = ["Sender", "publish", "sender", "subscribe", "unsubscribe"]
