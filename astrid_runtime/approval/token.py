"""Approval tokens: scoped, expiring, MAC'd with the kernel key.

A token is `v1.<payload>.<mac>`: `payload` is base64url JSON
`{"p": plugin, "k": kind, "r": resource, "exp": ms, "n": nonce}`, `mac` the
hex blake3 keyed hash (32-byte kernel key) of the payload bytes. The
kernel never stores issued tokens: a valid MAC proves the kernel issued
exactly this scope. `check` verifies MAC, scope (plugin, kind, resource
must all match the privileged call) and expiry, and can consume a token
(single use: its nonce is remembered until it expires).

The key is generated at first start and kept at `$ASTRID_HOME/kernel.key`,
mode 0600; a key file readable by others is refused, not used.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field

import blake3

from astrid_runtime.errors import Refusal
from astrid_runtime.identity import KEY_FILE, load_or_create_key

VERSION = "v1"
#: Longest token lifetime a rule may ask for.
MAX_TTL_S = 24 * 3600


@dataclass(frozen=True)
class Token:
    """An issued approval: the opaque string and the scope it carries."""

    token: str
    plugin: str
    kind: str
    resource: str
    expires_at_ms: int
    nonce: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class TokenIssuer:
    """Issues and checks tokens with one kernel key. Thread-safe."""

    key: bytes
    _used: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _mac(self, payload: bytes) -> str:
        return blake3.blake3(payload, key=self.key).hexdigest()

    def issue(self, plugin: str, kind: str, resource: str, ttl_s: float,
              now: int | None = None) -> Token:
        """A token for exactly (plugin, kind, resource), valid for `ttl_s` seconds."""
        expires = (now if now is not None else now_ms()) + int(min(ttl_s, MAX_TTL_S) * 1000)
        nonce = secrets.token_hex(8)
        payload = json.dumps({"p": plugin, "k": kind, "r": resource, "exp": expires,
                              "n": nonce}, separators=(",", ":"), sort_keys=True).encode()
        text = f"{VERSION}.{_b64(payload)}.{self._mac(payload)}"
        return Token(text, plugin, kind, resource, expires, nonce)

    def check(self, token: str, *, plugin: str, kind: str, resource: str,
              consume: bool = False, now: int | None = None) -> Token:
        """The token's scope if it is genuine, unexpired and for exactly this call.

        Raises `Refusal('denied', reason)` otherwise. With `consume`, a token
        checked once is refused afterwards (until its expiry, when it is
        refused as expired anyway).
        """
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != VERSION:
            raise Refusal("denied", "malformed approval token")
        try:
            payload = _unb64(parts[1])
        except (ValueError, binascii.Error):
            raise Refusal("denied", "malformed approval token") from None
        if not hmac.compare_digest(self._mac(payload), parts[2]):
            raise Refusal("denied", "approval token MAC does not verify (forged or altered)")
        body = json.loads(payload)
        scope = Token(token, str(body["p"]), str(body["k"]), str(body["r"]), int(body["exp"]),
                      str(body["n"]))
        at = now if now is not None else now_ms()
        if scope.plugin != plugin:
            raise Refusal("denied", f"approval token was issued to {scope.plugin!r}, "
                          f"not {plugin!r}")
        if scope.kind != kind:
            raise Refusal("denied", f"approval token is for {scope.kind!r}, not {kind!r}")
        if scope.resource != resource:
            raise Refusal("denied", f"approval token is for resource {scope.resource!r}, "
                          f"not {resource!r}")
        if at >= scope.expires_at_ms:
            raise Refusal("denied", f"approval token expired {(at - scope.expires_at_ms) // 1000}"
                          " s ago")
        if consume:
            with self._lock:
                for nonce in [n for n, exp in self._used.items() if exp <= at]:
                    del self._used[nonce]
                if scope.nonce in self._used:
                    raise Refusal("denied", "approval token was already used")
                self._used[scope.nonce] = scope.expires_at_ms
        return scope


__all__ = ["KEY_FILE", "Token", "TokenIssuer", "load_or_create_key", "now_ms"]
