"""The kernel's secret and the keys derived from it.

One secret per kernel home: 32 random bytes at `$ASTRID_HOME/kernel.key`,
mode 0600, created atomically at first start; a key file readable or
writable by group or others is refused, not used. Every key the kernel
uses is derived from it with blake3's key derivation under a context
string naming its one purpose, so no two uses share a key:

- compile-cache MAC: `derive(secret, CACHE_MAC_CONTEXT)` (engine.py);
- approval-token MAC of v1 tokens: the secret itself (approval/token.py);
- the kernel identity, an ed25519 seed: `derive(secret, IDENTITY_CONTEXT)`
  (bridge signing, the audit chain, signed tokens).

The identity's public key is the kernel's name on the wire: `kernel_id`
is its hex form. Another kernel verifies what this one signed knowing
only that public key.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from astrid_runtime.errors import KernelError

KEY_BYTES = 32
KEY_FILE = "kernel.key"
CACHE_MAC_CONTEXT = "astrid 2026 compile-cache mac v1"
IDENTITY_CONTEXT = "astrid 2026 kernel identity ed25519 v1"


def load_or_create_key(home: Path) -> bytes:
    """The kernel secret under `home`, created (0600, atomically) if missing.

    Raises `KernelError` if the file exists with the wrong size or is
    readable or writable by group or others.
    """
    path = home / KEY_FILE
    home.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = home / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another process created first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KernelError(f"{path}: kernel key is accessible to others "
                          f"(mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise KernelError(f"{path}: kernel key must be {KEY_BYTES} bytes, found {len(key)}")
    return key


def read_secret(path: Path) -> str:
    """A credential kept in a file (the NATS token): its text, stripped.

    Raises `KernelError` when it is missing, empty, or readable by group or others.
    """
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as e:
        raise KernelError(f"{path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KernelError(f"{path}: secret is accessible to others "
                          f"(mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
    if not text:
        raise KernelError(f"{path}: empty")
    return text


def derive(secret: bytes, context: str) -> bytes:
    """A 32-byte key for one purpose (blake3 derive_key; `context` names the purpose)."""
    return blake3.blake3(secret, derive_key_context=context).digest()


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is `public_key`'s ed25519 signature of `message`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class KernelIdentity:
    """An ed25519 key pair naming one kernel; `kernel_id` is the public key in hex."""

    private_key: Ed25519PrivateKey
    public_key: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> KernelIdentity:
        """The identity derived from a kernel secret (the same secret, the same identity)."""
        private = Ed25519PrivateKey.from_private_bytes(derive(secret, IDENTITY_CONTEXT))
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private, public)

    @classmethod
    def load(cls, home: Path) -> KernelIdentity:
        """The identity of the kernel whose home is `home` (the secret is created if missing)."""
        return cls.from_secret(load_or_create_key(home))

    @property
    def kernel_id(self) -> str:
        return self.public_key.hex()

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


__all__ = ["KEY_FILE", "KernelIdentity", "derive", "load_or_create_key", "read_secret",
           "verify_signature"]
