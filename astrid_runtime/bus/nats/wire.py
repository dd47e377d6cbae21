"""What a bridged message must carry to be believed. Pure rules: no I/O, no trio.

Every message a kernel bridges to NATS is signed with that kernel's ed25519
identity (identity.py) over what it claims: the topic, the publishing
plugin as that kernel's bus stamped it, a timestamp, the bridge session
(random per bridge start) and the message's sequence number in it, and the
payload. The signature travels in one header:

    Astrid-Sig: v2 <kernel-key-hex> <unix-ms> <session-hex> <seq> <signature-base64url>

A receiving kernel believes a message only if (`admit`):

1. the header parses and names a kernel in its peer list (`Peer`, from
   `astridd.toml` `[[nats_peer]]`): anyone else, a plain NATS client
   included, is refused;
2. the signature verifies for exactly this topic, plugin, time and payload:
   a forged `Astrid-Origin`, an altered payload or a replay on another
   topic fails;
3. the timestamp is within `MAX_SKEW_MS` of the receiver's clock, so an old
   capture cannot be replayed later;
4. the topic is inside that peer's publish grant: a peer may publish only
   where this kernel's operator allowed it;
5. (`ReplayGuard`) its (kernel, session, seq) was not believed before: a
   captured message replayed inside the time window is refused. Per session
   the guard keeps the newest seq and which of the `REPLAY_WINDOW` before it
   were seen (IPsec's anti-replay window), so a message older than that is
   refused too; a session's state is kept while one of its messages could
   still pass the time check (2 x `MAX_SKEW_MS` after its last one).

What passes becomes `Sender(plugin, kernel)`: receivers see the remote
plugin and the kernel that vouched for it, never a local name.

What this does not know: whether the remote kernel's own plugin was
entitled to the name it stamped (that is the remote kernel's job, as it is
this kernel's for its own plugins).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from astrid_runtime.bus.router import Sender
from astrid_runtime.bus.topics import match_tokens, validate_pattern
from astrid_runtime.identity import KernelIdentity, verify_signature

HEADER_SIG = "Astrid-Sig"
VERSION = "v2"
#: How far a message's timestamp may be from the receiver's clock (both ways).
MAX_SKEW_MS = 5 * 60 * 1000
#: Sequence numbers behind a session's newest that may still arrive once (NATS keeps a
#: connection's order; this allows for a reconnect's resend, not for real reordering).
REPLAY_WINDOW = 4096
_DOMAIN = b"astrid bridge v2\0"
_SESSION_HEX = 16


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


@dataclass(frozen=True)
class Stamp:
    """Where one message sits in its sender's stream: its bridge session and number."""

    session: str  # 16 hex digits, random per bridge start
    seq: int


def new_session() -> str:
    """A fresh bridge session id (64 random bits)."""
    return secrets.token_hex(_SESSION_HEX // 2)


def signing_material(topic: str, plugin: str, at_ms: int, stamp: Stamp,
                     payload: bytes) -> bytes:
    """The exact bytes a kernel signs for one message."""
    return b"\0".join((_DOMAIN, topic.encode(), plugin.encode(), str(at_ms).encode(),
                       stamp.session.encode(), str(stamp.seq).encode(), payload))


def sign(identity: KernelIdentity, topic: str, plugin: str, payload: bytes, at_ms: int,
         stamp: Stamp) -> str:
    """The `Astrid-Sig` header value for a message this kernel bridges."""
    signature = identity.sign(signing_material(topic, plugin, at_ms, stamp, payload))
    encoded = base64.urlsafe_b64encode(signature).decode().rstrip("=")
    return f"{VERSION} {identity.kernel_id} {at_ms} {stamp.session} {stamp.seq} {encoded}"


def _parse(header: str) -> tuple[str, int, Stamp, bytes] | None:
    parts = header.split(" ")
    if len(parts) != 6 or parts[0] != VERSION:
        return None
    kernel, at, session, seq, encoded = parts[1:]
    if (len(kernel) != 64 or not at.isdigit() or len(session) != _SESSION_HEX
            or not seq.isdigit() or len(seq) > 20):
        return None
    try:
        bytes.fromhex(kernel)
        bytes.fromhex(session)
        signature = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (ValueError, binascii.Error):
        return None
    return kernel, int(at), Stamp(session, int(seq)), signature


@dataclass
class _Seen:
    newest: int
    bits: int  # bit i: newest - i was believed
    last_ms: int


class ReplayGuard:
    """Which signed messages were already believed (rule 5). Not thread-safe: one
    receiver thread owns it. Memory: one entry per live (kernel, session)."""

    def __init__(self, window: int = REPLAY_WINDOW, keep_ms: int = 2 * MAX_SKEW_MS) -> None:
        self._window = window
        self._mask = (1 << window) - 1
        self._keep_ms = keep_ms
        self._seen: dict[tuple[str, str], _Seen] = {}

    def sessions(self) -> int:
        """How many sessions the guard remembers."""
        return len(self._seen)

    def mark(self, kernel: str, stamp: Stamp, now_ms: int) -> str | None:
        """Record `stamp` as believed; why not if it was already, or is too old."""
        key = (kernel, stamp.session)
        seen = self._seen.get(key)
        if seen is None:
            self._forget_idle(now_ms)
            self._seen[key] = _Seen(stamp.seq, 1, now_ms)
            return None
        behind = seen.newest - stamp.seq
        if behind < 0:
            seen.bits = ((seen.bits << -behind) | 1) & self._mask
            seen.newest = stamp.seq
        elif behind >= self._window:
            return f"sequence {stamp.seq} is {behind} behind the newest (replay window)"
        elif seen.bits >> behind & 1:
            return f"replayed (session {stamp.session}, sequence {stamp.seq} seen before)"
        else:
            seen.bits |= 1 << behind
        seen.last_ms = now_ms
        return None

    def _forget_idle(self, now_ms: int) -> None:
        idle = [k for k, s in self._seen.items() if now_ms - s.last_ms > self._keep_ms]
        for k in idle:
            del self._seen[k]


def admit(topic: str, plugin: str, payload: bytes, header: str | None,
          peers: Iterable[Peer], now_ms: int, guard: ReplayGuard) -> Sender | Rejected:
    """The verified sender of a bridged message, or why it is refused (see the module doc).

    A believed message is recorded in `guard` (the receiver's own), so it is believed once.
    """
    if header is None:
        return Rejected("unsigned (not from an Astrid kernel)")
    parsed = _parse(header)
    if parsed is None:
        return Rejected("malformed Astrid-Sig header")
    kernel, at_ms, stamp, signature = parsed
    peer = next((p for p in peers if p.kernel == kernel), None)
    if peer is None:
        return Rejected(f"kernel {kernel[:16]}… is not a peer of this kernel")
    material = signing_material(topic, plugin, at_ms, stamp, payload)
    if not verify_signature(bytes.fromhex(kernel), material, signature):
        return Rejected(f"signature of kernel {kernel[:16]}… does not verify")
    if abs(now_ms - at_ms) > MAX_SKEW_MS:
        return Rejected(f"timestamp {at_ms} is more than {MAX_SKEW_MS // 1000} s off")
    tokens = topic.split(".")
    if not any(match_tokens(validate_pattern(g), tokens) for g in peer.publish):
        return Rejected(f"kernel {kernel[:16]}… may not publish to {topic!r}")
    if not plugin or "/" in plugin:
        return Rejected(f"bad publisher name {plugin!r}")
    replay = guard.mark(kernel, stamp, now_ms)
    if replay is not None:
        return Rejected(replay)
    return Sender(plugin, kernel)


# -- topics, patterns and the origin header on the wire --------------------------------

HEADER_ORIGIN = "Astrid-Origin"
_TOKEN = r"[^.\s*>]+"
_TOPIC_RE = re.compile(rf"{_TOKEN}(?:\.{_TOKEN})*\Z")
_PATTERN_RE = re.compile(rf"(?:{_TOKEN}|\*)(?:\.(?:{_TOKEN}|\*))*(?:\.>)?\Z|>\Z")
_INSTANCE_RE = re.compile(r"[A-Za-z0-9._-]+\Z")


def is_topic(topic: str) -> bool:
    """Whether `topic` is a NATS subject tail without wildcards or blanks."""
    return _TOPIC_RE.match(topic) is not None


def is_pattern(pattern: str) -> bool:
    """Whether `pattern` is a NATS pattern (`*` one token, `>` last for the rest)."""
    return _PATTERN_RE.match(pattern) is not None


def is_instance_id(instance: str) -> bool:
    """Whether `instance` may name a bridge in `Astrid-Origin` (no '/', no blanks)."""
    return _INSTANCE_RE.match(instance) is not None


def origin_header(instance: str, origin: str) -> str:
    """The `Astrid-Origin` value: `<instance>/<publisher inside it>`."""
    return f"{instance}/{origin}"


def origin_plugin(header: str | None) -> str:
    """The publisher an `Astrid-Origin` value names ('' without one)."""
    return header.partition("/")[2] if header is not None else ""


__all__ = ["HEADER_ORIGIN", "HEADER_SIG", "MAX_SKEW_MS", "REPLAY_WINDOW", "Peer", "Rejected",
           "ReplayGuard", "Stamp", "admit", "is_instance_id", "is_pattern", "is_topic",
           "new_session", "origin_header", "origin_plugin", "sign", "signing_material"]
