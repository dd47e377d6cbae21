"""What the NATS bridge hands the kernel: its errors (each an ABI error case), the
messages that arrived, and its counters. Plain values: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, NamedTuple

from astrid_runtime.bus.router import Sender
from astrid_runtime.errors import BusError

REMOTE_ORIGIN_PREFIX: Final = "nats:"


class BridgeError(BusError):
    """A NATS bridge operation failed; ``kind`` is the ABI error case."""

    error_kind: ClassVar[str] = "unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(self.error_kind, message)


class BridgeInvalid(BridgeError):
    """A malformed topic, pattern or origin."""

    error_kind = "invalid"


class BridgeTooLarge(BridgeError):
    """A payload over the NATS server's max_payload."""

    error_kind = "too-large"


class BridgeFull(BridgeError):
    """The outbox is full: the server is slow or unreachable; try again later."""

    error_kind = "rate-limited"


class BridgeUnavailable(BridgeError):
    """The bridge is not running, or NATS is unreachable."""


class BridgedMessage(NamedTuple):
    """A bus message that arrived from NATS."""

    topic: str
    payload: bytes
    origin: str
    #: The verified remote sender (None when the bridge verifies nothing).
    sender: Sender | None = None


@dataclass(frozen=True)
class BridgeStats:
    """Counters since the bridge started (a snapshot)."""

    connected: bool
    published: int
    received: int
    dropped_outbound: int
    dropped_inbound: int
    echoes_dropped: int
    reconnects: int
    last_error: str | None
    #: Inbound messages refused by `wire.admit` (unsigned, forged, not a peer, ...).
    rejected: int = 0
    last_rejection: str | None = None


def is_remote_origin(origin: str) -> bool:
    """True for the origin of a message that came in from NATS."""
    return origin.startswith(REMOTE_ORIGIN_PREFIX)
