"""What a bridged message must carry to be believed. Pure rules: no I/O, no trio.

Every message a kernel bridges to NATS is signed with that kernel's ed25519
identity (identity.py) over what it claims: the topic, the publishing
plugin as that kernel's bus stamped it, a timestamp and the payload. The
signature travels in one header:

    Astrid-Sig: v1 <kernel-key-hex> <unix-ms> <signature-base64url>

A receiving kernel believes a message only if (`admit`):

1. the header parses and names a kernel in its peer list (`Peer`, from
   `astridd.toml` `[[nats_peer]]`): anyone else, a plain NATS client
   included, is refused;
2. the signature verifies for exactly this topic, plugin, time and payload:
   a forged `Astrid-Origin`, an altered payload or a replay on another
   topic fails;
3. the timestamp is within `MAX_SKEW_MS` of the receiver's clock, so an old
   capture cannot be replayed later (a replay inside the window is
   possible; NATS itself is authenticated, see docs/kernel.md);
4. the topic is inside that peer's publish grant: a peer may publish only
   where this kernel's operator allowed it.

What passes becomes `Sender(plugin, kernel)`: receivers see the remote
plugin and the kernel that vouched for it, never a local name.

What this does not know: whether the remote kernel's own plugin was
entitled to the name it stamped (that is the remote kernel's job, as it is
this kernel's for its own plugins).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass

from astrid_runtime.bus.router import Sender
from astrid_runtime.bus.topics import match_tokens, validate_pattern
from astrid_runtime.identity import KernelIdentity, verify_signature

HEADER_SIG = "Astrid-Sig"
VERSION = "v1"
#: How far a message's timestamp may be from the receiver's clock (both ways).
MAX_SKEW_MS = 5 * 60 * 1000
_DOMAIN = b"astrid bridge v1\0"


@dataclass(frozen=True)
class Peer:
    """A kernel this one accepts bridged messages from, and where it may publish."""

    kernel: str  # hex ed25519 public key
    publish: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for pattern in self.publish:
            validate_pattern(pattern)


@dataclass(frozen=True)
class Rejected:
    """Why a bridged message was not believed (one line, for a counter and the log)."""

    reason: str


def signing_material(topic: str, plugin: str, at_ms: int, payload: bytes) -> bytes:
    """The exact bytes a kernel signs for one message."""
    return b"\0".join((_DOMAIN, topic.encode(), plugin.encode(), str(at_ms).encode(), payload))


def sign(identity: KernelIdentity, topic: str, plugin: str, payload: bytes, at_ms: int) -> str:
    """The `Astrid-Sig` header value for a message this kernel bridges."""
    signature = identity.sign(signing_material(topic, plugin, at_ms, payload))
    encoded = base64.urlsafe_b64encode(signature).decode().rstrip("=")
    return f"{VERSION} {identity.kernel_id} {at_ms} {encoded}"


def _parse(header: str) -> tuple[str, int, bytes] | None:
    parts = header.split(" ")
    if len(parts) != 4 or parts[0] != VERSION:
        return None
    kernel, at, encoded = parts[1], parts[2], parts[3]
    if len(kernel) != 64 or not at.isdigit():
        return None
    try:
        bytes.fromhex(kernel)
        signature = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (ValueError, binascii.Error):
        return None
    return kernel, int(at), signature


def admit(topic: str, plugin: str, payload: bytes, header: str | None,
          peers: Iterable[Peer], now_ms: int) -> Sender | Rejected:
    """The verified sender of a bridged message, or why it is refused (see the module doc)."""
    if header is None:
        return Rejected("unsigned (not from an Astrid kernel)")
    parsed = _parse(header)
    if parsed is None:
        return Rejected("malformed Astrid-Sig header")
    kernel, at_ms, signature = parsed
    peer = next((p for p in peers if p.kernel == kernel), None)
    if peer is None:
        return Rejected(f"kernel {kernel[:16]}… is not a peer of this kernel")
    if not verify_signature(bytes.fromhex(kernel), signing_material(topic, plugin, at_ms,
                                                                     payload), signature):
        return Rejected(f"signature of kernel {kernel[:16]}… does not verify")
    if abs(now_ms - at_ms) > MAX_SKEW_MS:
        return Rejected(f"timestamp {at_ms} is more than {MAX_SKEW_MS // 1000} s off")
    tokens = topic.split(".")
    if not any(match_tokens(validate_pattern(g), tokens) for g in peer.publish):
        return Rejected(f"kernel {kernel[:16]}… may not publish to {topic!r}")
    if not plugin or "/" in plugin:
        return Rejected(f"bad publisher name {plugin!r}")
    return Sender(plugin, kernel)


__all__ = ["HEADER_SIG", "MAX_SKEW_MS", "Peer", "Rejected", "admit", "sign",
           "signing_material"]
