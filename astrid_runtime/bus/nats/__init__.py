"""The bus's bridge to NATS: `wire` (pure rules: headers, signing, trust) and
`bridge` (the nats-py connection in its own asyncio thread)."""

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
