"""What a plugin may do (grants) and how much (limits). Pure values.

Grants are recorded in `plugins.lock` at install time and are what the
kernel enforces at run time; a manifest that later asks for more changes
nothing until it is installed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from astrid_runtime.errors import BusError
from astrid_runtime.topics import covers, match_tokens, validate_pattern, validate_topic


@dataclass(frozen=True)
class Grants:
    """Capabilities granted to one plugin."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    kv: bool = False
    vfs: tuple[str, ...] = ()
    cap: tuple[str, ...] = ()

    def check_publish(self, topic: str) -> None:
        """Raise `BusError('denied')` unless `topic` is inside a publish grant."""
        tokens = validate_topic(topic)
        for grant in self.publish:
            if match_tokens(validate_pattern(grant), tokens):
                return
        raise BusError("denied", f"publish to {topic!r} not granted")

    def check_subscribe(self, pattern: str) -> None:
        """Raise `BusError('denied')` unless `pattern` lies inside a subscribe grant."""
        validate_pattern(pattern)
        if not any(covers(grant, pattern) for grant in self.subscribe):
            raise BusError("denied", f"subscribe to {pattern!r} not granted")

    def to_toml(self) -> dict[str, Any]:
        return {
            "publish": list(self.publish),
            "subscribe": list(self.subscribe),
            "kv": self.kv,
            "vfs": list(self.vfs),
            "cap": list(self.cap),
        }

    def exceeds(self, granted: Grants) -> list[str]:
        """What `self` asks for beyond `granted` (empty when it asks for no more)."""
        extra = [f"publish {p}" for p in self.publish
                 if not any(covers(g, p) for g in granted.publish)]
        extra += [f"subscribe {p}" for p in self.subscribe
                  if not any(covers(g, p) for g in granted.subscribe)]
        if self.kv and not granted.kv:
            extra.append("kv")
        extra += [f"vfs {r}" for r in self.vfs if r not in granted.vfs]
        extra += [f"cap {c}" for c in self.cap if c not in granted.cap]
        return extra


@dataclass(frozen=True)
class Limits:
    """Per-plugin resource limits. Defaults suit a componentize-py plugin."""

    #: Linear memory across the plugin's Store (componentize-py needs ~40 MiB).
    memory_bytes: int = 256 * 1024 * 1024
    #: Wall-clock budget of one guest call (init or on-message), enforced by epochs.
    call_timeout_ms: int = 5_000
    #: Fuel (roughly, wasm instructions) per guest call; 0 = unmetered.
    fuel_per_call: int = 20_000_000_000
    #: Messages waiting in the plugin's mailbox before publishers are refused.
    mailbox: int = 256
    #: Largest payload the plugin may publish.
    max_payload_bytes: int = 1024 * 1024
    #: Sustained publishes per second (token bucket, burst = one second's worth).
    publish_per_sec: int = 10_000
    #: Crashes within `crash_window_s` that disable the plugin.
    max_crashes: int = 5
    crash_window_s: float = 60.0
    #: Restart backoff: first delay, doubling up to the cap.
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 10.0

    def replace(self, **changes: Any) -> Limits:
        fields = {**self.__dict__, **changes}
        return Limits(**fields)


DEFAULT_LIMITS = Limits()
