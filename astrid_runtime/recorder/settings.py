"""The `[recording]` table of `astridd.toml`.

    [recording]
    enabled = true          # false: the bus and host calls are not recorded
    url = "surrealkv://recording"   # relative to home; mem://; a SurrealDB server URL
    max_events = 100000     # retention: the newest events kept (give or take a chunk)
    flush_ms = 100          # how often gathered events are written (a kill -9 loses these)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrid_runtime.tomlfile import TomlDoc


@dataclass(frozen=True)
class RecordingSettings:
    enabled: bool = True
    #: None: `surrealkv://HOME/recording`.
    url: str | None = None
    max_events: int = 100_000
    flush_ms: int = 100
    #: Events (and calls) waiting for a flush before new ones are counted lost.
    max_pending: int = 100_000


DEFAULT_RECORDING = RecordingSettings()


def resolve_url(value: str, home: Path) -> str:
    """A `surrealkv://` path relative to `home`; other URLs unchanged."""
    if value.startswith("surrealkv://"):
        path = Path(value.removeprefix("surrealkv://")).expanduser()
        return f"surrealkv://{path if path.is_absolute() else home / path}"
    return value


def parse_settings(doc: TomlDoc, table: dict[str, Any], home: Path) -> RecordingSettings:
    """The `[recording]` table of `doc` (errors name the file and line)."""
    doc.unknown_keys(table, {"enabled", "url", "max_events", "flush_ms"}, "recording")
    positive: Callable[[int], str | None] = lambda v: None if v >= 1 else "must be at least 1"  # noqa: E731
    url = doc.get(table, "url", str, None, table_name="recording")
    return RecordingSettings(
        enabled=doc.get(table, "enabled", bool, True, table_name="recording"),
        url=resolve_url(url, home) if url else None,
        max_events=doc.get(table, "max_events", int, 100_000, table_name="recording",
                           check=positive),
        flush_ms=doc.get(table, "flush_ms", int, 100, table_name="recording", check=positive))
