"""The `[recording]` table of `astridd.toml`.

    [recording]
    enabled = true          # false: the bus and host calls are not recorded
    url = "surrealkv://recording"   # relative to home; mem://; a SurrealDB server URL
    max_events = 100000     # retention: the newest events kept (give or take a chunk)
    flush_ms = 20           # how often gathered events are written (a kill -9 loses these)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RecordingSettings:
    enabled: bool = True
    #: None: `surrealkv://HOME/recording`.
    url: str | None = None
    max_events: int = 100_000
    flush_ms: int = 20
    #: Events (and calls) waiting for a flush before new ones are counted lost.
    max_pending: int = 100_000


def resolve_url(value: str, home: Path) -> str:
    """A `surrealkv://` path relative to `home`; other URLs unchanged."""
    if value.startswith("surrealkv://"):
        path = Path(value.removeprefix("surrealkv://")).expanduser()
        return f"surrealkv://{path if path.is_absolute() else home / path}"
    return value
