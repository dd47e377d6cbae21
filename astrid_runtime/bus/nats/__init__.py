"""The bus's bridge to NATS.

- `wire`: the pure rules (topics, patterns, headers, signatures, replay), no I/O;
- `bridge`: `NatsBridge`, its trio half (publish, subscribe, the inbound channel);
- `asyncio_side`: its other half, nats-py in its own thread and asyncio loop;
- `handoff`: what the two halves hand each other (outbox items, completions);
- `values`: the errors, messages and counters it hands out.
"""

from astrid_runtime.bus.nats.bridge import (
    BridgedMessage,
    BridgeError,
    BridgeFull,
    BridgeInvalid,
    BridgeStats,
    BridgeTooLarge,
    BridgeUnavailable,
    NatsBridge,
    open_nats_bridge,
)

__all__ = ["BridgeError", "BridgeFull", "BridgeInvalid", "BridgeStats", "BridgeTooLarge",
           "BridgeUnavailable", "BridgedMessage", "NatsBridge", "open_nats_bridge"]
