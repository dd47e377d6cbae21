"""Which hosts a plugin may reach over HTTP: its `cap` grant's `net.http:HOST-GLOB` entries.

Pure rules, no I/O. A grant entry `net.http:api.openai.com` allows that host
on the scheme's default port; `net.http:127.0.0.1:*` any port of 127.0.0.1;
`net.http:*.example.com:8443` one port of a domain's hosts. Globs are
`fnmatch` patterns, matched case-insensitively against `host:port` (and
against `host` alone when the port is the scheme's default). A bare
`net.http` entry grants no host: a plugin names where it talks to, and the
operator approves that list at install.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from astrid_runtime.errors import Refusal

KIND = "net.http"
PREFIX = KIND + ":"
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Target:
    """Where a request goes, as the kernel parsed its URL."""

    scheme: str
    host: str
    port: int

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"


def parse_url(url: str) -> Target:
    """The target of an absolute http(s) URL; `Refusal('invalid')` for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise Refusal("invalid", f"bad URL {url[:200]!r}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise Refusal("invalid", f"URL {url[:200]!r}: only http and https are supported")
    host = (parts.hostname or "").lower()
    if not host:
        raise Refusal("invalid", f"URL {url[:200]!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise Refusal("invalid", "credentials in the URL are refused; the kernel adds secrets")
    return Target(scheme, host, port if port is not None else DEFAULT_PORTS[scheme])


def host_globs(cap_grants: Sequence[str]) -> tuple[str, ...]:
    """The host globs of a plugin's `cap` grant (`net.http:GLOB` entries)."""
    return tuple(g.removeprefix(PREFIX).lower() for g in cap_grants
                 if g.startswith(PREFIX) and len(g) > len(PREFIX))


def matches(glob: str, target: Target) -> bool:
    """Does one host glob cover `target`?"""
    if fnmatchcase(target.hostport, glob):
        return True
    return target.port == DEFAULT_PORTS[target.scheme] and fnmatchcase(target.host, glob)


def allowed(globs: Sequence[str], target: Target) -> bool:
    """Does any of `globs` cover `target`?"""
    return any(matches(g, target) for g in globs)


__all__ = ["KIND", "PREFIX", "Target", "allowed", "host_globs", "matches", "parse_url"]
