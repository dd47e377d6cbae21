"""What a plugin may do (grants) and how much (limits). Pure values.

Grants and limits are recorded in `plugins.lock` at install time, as the
operator approved them, and are what the kernel enforces at run time; a
manifest that later asks for more changes nothing until it is installed
again. Both are checked against the kernel's own policy (`GrantPolicy`:
ceilings on every limit from `astridd.toml`, and whether wildcard grants
are allowed at all) at install and again at every boot, so a hand-edited
lock cannot exceed what the kernel's owner allows either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from astrid_runtime.bus.topics import covers, match_tokens, validate_pattern, validate_topic
from astrid_runtime.errors import BusError


@dataclass(frozen=True)
class Grants:
    """Capabilities granted to one plugin."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    kv: bool = False
    vfs: tuple[str, ...] = ()
    cap: tuple[str, ...] = ()
    #: WIT interfaces of other plugins it may call (`ns:pkg/iface[@version]`; links.py).
    link: tuple[str, ...] = ()

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

    def wildcards(self) -> list[str]:
        """The publish and subscribe grants that use `*` or `>` (they need explicit consent)."""
        return ([f"publish {p}" for p in self.publish if _is_wildcard(p)]
                + [f"subscribe {p}" for p in self.subscribe if _is_wildcard(p)])

    def to_toml(self) -> dict[str, Any]:
        return {
            "publish": list(self.publish),
            "subscribe": list(self.subscribe),
            "kv": self.kv,
            "vfs": list(self.vfs),
            "cap": list(self.cap),
            "link": list(self.link),
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
        extra += [f"link {x}" for x in self.link if x not in granted.link]
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

    def over(self, ceilings: Limits) -> list[str]:
        """Each limit more lenient than `ceilings` allows, as `key value (ceiling N)`.

        More lenient is larger for sizes, times, rates and crash counts
        (fuel 0, unmetered, is larger than any), and smaller for the crash
        window and the first backoff (a tiny window never disables a
        crash-looping plugin; a tiny backoff restarts it in a busy loop).
        """
        out: list[str] = []
        for key, (field_name, scale) in LIMIT_KEYS.items():
            mine, cap = getattr(self, field_name), getattr(ceilings, field_name)
            if field_name == "fuel_per_call":
                mine, cap = mine or math.inf, cap or math.inf
            if mine > cap:
                out.append(f"{key} {_shown(mine, scale)} (ceiling {_shown(cap, scale)})")
        for key in FLOOR_KEYS:
            mine, floor = getattr(self, key), getattr(ceilings, key)
            if mine < floor:
                out.append(f"{key} {mine:g} (floor {floor:g})")
        return out

    def to_toml(self) -> dict[str, Any]:
        """The `[limits]` table that parses back to these limits (see `LIMIT_KEYS`)."""
        table: dict[str, Any] = {key: getattr(self, f) // scale
                                 for key, (f, scale) in LIMIT_KEYS.items()}
        table.update({key: float(getattr(self, key)) for key in FLOAT_LIMIT_KEYS})
        return table


def _shown(value: float, scale: int) -> str:
    return "unmetered" if value == math.inf else str(int(value) // scale)


def _is_wildcard(pattern: str) -> bool:
    return any(token in ("*", ">") for token in pattern.split("."))


#: `[limits]` key (manifest, lockfile, ceilings) -> (Limits field, scale).
LIMIT_KEYS: dict[str, tuple[str, int]] = {
    "memory_mb": ("memory_bytes", 1024 * 1024),
    "call_timeout_ms": ("call_timeout_ms", 1),
    "fuel_per_call": ("fuel_per_call", 1),
    "mailbox": ("mailbox", 1),
    "max_payload_kb": ("max_payload_bytes", 1024),
    "publish_per_sec": ("publish_per_sec", 1),
    "max_crashes": ("max_crashes", 1),
}
FLOAT_LIMIT_KEYS = ("crash_window_s", "backoff_initial_s", "backoff_max_s")
#: Float limits whose smaller values are the more lenient ones (ceilings are floors there).
FLOOR_KEYS = ("crash_window_s", "backoff_initial_s")

DEFAULT_LIMITS = Limits()
#: The kernel's ceilings when `astridd.toml` sets none: the default limits, except
#: room for a larger mailbox and Store (both cost only the kernel's memory).
DEFAULT_CEILINGS = Limits(memory_bytes=512 * 1024 * 1024, mailbox=4096)


@dataclass(frozen=True)
class GrantPolicy:
    """What the kernel's owner allows any plugin: ceilings on limits, wildcard grants or not."""

    ceilings: Limits = DEFAULT_CEILINGS
    allow_wildcards: bool = True

    def problems(self, grants: Grants, limits: Limits) -> list[str]:
        """Why a pin with these grants and limits may not run here (empty: it may)."""
        out = [f"{item} is over the kernel's ceiling" for item in limits.over(self.ceilings)]
        if not self.allow_wildcards:
            out += [f"wildcard grant {w} is forbidden by the kernel's policy"
                    for w in grants.wildcards()]
        return out


DEFAULT_POLICY = GrantPolicy()
