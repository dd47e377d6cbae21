"""The `[recording]` table of `astridd.toml`.

    [recording]
    enabled = true          # false: the bus and host calls are not recorded
    url = "surrealkv://recording"   # relative to home; mem://; a SurrealDB server URL:
                                    # ws://HOST:PORT, wss://, http://, https://
    username = "astrid"     # server only: sign in as this (root or namespace) user,
    password_file = "recording.password"   # with the password in this file (0600)
    max_events = 100000     # retention: the newest events kept (give or take a chunk)
    flush_ms = 100          # how often gathered events are written (a kill -9 loses these)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrid_runtime.tomlfile import TomlDoc

#: URL schemes the store opens: embedded (`surrealkv://PATH`, `mem://`), or a server.
EMBEDDED_SCHEMES = ("surrealkv", "file", "mem", "memory")
SERVER_SCHEMES = ("ws", "wss", "http", "https")


@dataclass(frozen=True)
class RecordingSettings:
    enabled: bool = True
    #: None: `surrealkv://HOME/recording`.
    url: str | None = None
    #: A SurrealDB server's user, and the file holding its password (both or neither).
    username: str | None = None
    password_file: Path | None = None
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


def scheme_problem(url: str) -> str | None:
    """Why the store cannot take `url` by its form alone (None: it may)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in EMBEDDED_SCHEMES + SERVER_SCHEMES:
        return ("must be surrealkv://PATH, mem://, or a SurrealDB server's ws://, wss://, "
                "http:// or https:// URL")
    if scheme.lower() in SERVER_SCHEMES and not rest.split("/", 1)[0]:
        return "names no server (ws://HOST:PORT)"
    return None


def parse_settings(doc: TomlDoc, table: dict[str, Any], home: Path) -> RecordingSettings:
    """The `[recording]` table of `doc` (errors name the file and line)."""
    doc.unknown_keys(table, {"enabled", "url", "username", "password_file", "max_events",
                             "flush_ms"}, "recording")
    positive: Callable[[int], str | None] = lambda v: None if v >= 1 else "must be at least 1"  # noqa: E731
    url = doc.get(table, "url", str, None, table_name="recording", check=scheme_problem)
    username = doc.get(table, "username", str, None, table_name="recording")
    password = doc.get(table, "password_file", str, None, table_name="recording")
    if (username is None) != (password is None):
        raise doc.fail("username and password_file go together", "recording",
                       "username" if username is not None else "password_file")
    if username is not None and (url is None or url.partition("://")[0].lower()
                                 not in SERVER_SCHEMES):
        raise doc.fail("username is for a SurrealDB server url (ws://, http://, ...)",
                       "recording", "username")
    return RecordingSettings(
        enabled=doc.get(table, "enabled", bool, True, table_name="recording"),
        url=resolve_url(url, home) if url else None,
        username=username,
        password_file=home / Path(password).expanduser() if password else None,
        max_events=doc.get(table, "max_events", int, 100_000, table_name="recording",
                           check=positive),
        flush_ms=doc.get(table, "flush_ms", int, 100, table_name="recording", check=positive))
