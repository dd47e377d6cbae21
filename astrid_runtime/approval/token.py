"""Capability tokens: scoped, expiring, signed with the kernel's ed25519 key.

A token is `v2.<payload>.<signature>`, both base64url: `payload` is JSON

    {"kid": kernel key (hex), "p": plugin, "k": kind, "r": resource,
     "g": true if "r" is a glob, "exp": ms, "n": nonce, "u": single use}

and `signature` the ed25519 signature of the payload bytes by the kernel
identity derived from the kernel secret (identity.py). The kernel keeps no
table of issued tokens: a valid signature proves that kernel issued
exactly this scope, and because the key is public, *another* kernel can
check it too (`verify_token` with the issuer's public key), without any
shared secret. `check` verifies signature, scope (plugin, kind and
resource must match the privileged call; a glob scope matches resources
by `fnmatch`, `*` crossing `/`) and expiry, and consumes a single-use
token (its nonce is remembered until it expires; per verifying kernel).

The secret is generated at first start and kept at `$ASTRID_HOME/kernel.key`,
mode 0600; a key file readable by others is refused, not used.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from astrid_runtime.errors import Refusal
from astrid_runtime.identity import (
    KEY_FILE,
    KernelIdentity,
    load_or_create_key,
    verify_signature,
)

VERSION = "v2"
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
    #: The issuing kernel's public key (hex).
    kernel: str = ""
    #: `resource` is an fnmatch glob over resources, not one resource.
    glob: bool = False
    single_use: bool = True


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def now_ms() -> int:
    return int(time.time() * 1000)


def _decode(token: str, public_key: bytes) -> Token:
    """The scope of a token signed by `public_key`, or `Refusal('denied')`."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise Refusal("denied", "malformed approval token")
    try:
        payload, signature = _unb64(parts[1]), _unb64(parts[2])
        body = json.loads(payload)
    except (ValueError, binascii.Error):
        raise Refusal("denied", "malformed approval token") from None
    if not isinstance(body, dict) or not verify_signature(public_key, payload, signature):
        raise Refusal("denied", "approval token signature does not verify (forged, altered, "
                      "or issued by another kernel)")
    try:
        return Token(token, str(body["p"]), str(body["k"]), str(body["r"]), int(body["exp"]),
                     str(body["n"]), str(body["kid"]), bool(body.get("g", False)),
                     bool(body.get("u", True)))
    except (KeyError, TypeError, ValueError):
        raise Refusal("denied", "malformed approval token") from None


def verify_token(token: str, public_key: bytes, *, plugin: str, kind: str, resource: str,
                 now: int | None = None) -> Token:
    """The scope of a token another kernel issued, checked like `TokenIssuer.check`
    against that kernel's public key (no single-use tracking: that is the issuer's)."""
    scope = _decode(token, public_key)
    _check_scope(scope, plugin, kind, resource, now if now is not None else now_ms())
    return scope


def _check_scope(scope: Token, plugin: str, kind: str, resource: str, at: int) -> None:
    if scope.plugin != plugin:
        raise Refusal("denied", f"approval token was issued to {scope.plugin!r}, "
                      f"not {plugin!r}")
    if scope.kind != kind:
        raise Refusal("denied", f"approval token is for {scope.kind!r}, not {kind!r}")
    covered = fnmatchcase(resource, scope.resource) if scope.glob else scope.resource == resource
    if not covered:
        raise Refusal("denied", f"approval token is for resource {scope.resource!r}, "
                      f"not {resource!r}")
    if at >= scope.expires_at_ms:
        raise Refusal("denied", f"approval token expired {(at - scope.expires_at_ms) // 1000}"
                      " s ago")


@dataclass
class TokenIssuer:
    """Issues and checks tokens with one kernel secret (its ed25519 identity). Thread-safe."""

    key: bytes
    _used: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _identity: KernelIdentity | None = None

    @property
    def identity(self) -> KernelIdentity:
        if self._identity is None:
            self._identity = KernelIdentity.from_secret(self.key)
        return self._identity

    def issue(self, plugin: str, kind: str, resource: str, ttl_s: float,
              now: int | None = None, *, glob: bool = False,
              single_use: bool = True) -> Token:
        """A token for exactly (plugin, kind, resource) — or every resource matching the
        glob `resource` when `glob` — valid for `ttl_s` seconds."""
        expires = (now if now is not None else now_ms()) + int(min(ttl_s, MAX_TTL_S) * 1000)
        nonce = secrets.token_hex(8)
        kid = self.identity.kernel_id
        payload = json.dumps({"kid": kid, "p": plugin, "k": kind, "r": resource, "g": glob,
                              "exp": expires, "n": nonce, "u": single_use},
                             separators=(",", ":"), sort_keys=True).encode()
        text = f"{VERSION}.{_b64(payload)}.{_b64(self.identity.sign(payload))}"
        return Token(text, plugin, kind, resource, expires, nonce, kid, glob, single_use)

    def check(self, token: str, *, plugin: str, kind: str, resource: str,
              consume: bool = False, now: int | None = None) -> Token:
        """The token's scope if it is genuine, unexpired and covers exactly this call.

        Raises `Refusal('denied', reason)` otherwise. With `consume`, a
        single-use token checked once is refused afterwards (until its
        expiry, when it is refused as expired anyway); a token issued with
        `single_use=False` may be used until it expires.
        """
        scope = _decode(token, self.identity.public_key)
        at = now if now is not None else now_ms()
        _check_scope(scope, plugin, kind, resource, at)
        if consume and scope.single_use:
            with self._lock:
                for nonce in [n for n, exp in self._used.items() if exp <= at]:
                    del self._used[nonce]
                if scope.nonce in self._used:
                    raise Refusal("denied", "approval token was already used")
                self._used[scope.nonce] = scope.expires_at_ms
        return scope


__all__ = ["KEY_FILE", "Token", "TokenIssuer", "load_or_create_key", "now_ms", "verify_token"]
