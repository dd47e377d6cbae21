"""`astridd.toml`: the kernel's configuration, read once at start.

    home = "~/.local/share/astrid"   # state: socket, compile cache, kv (default $ASTRID_HOME)
    lockfile = "plugins.lock"         # relative to this file
    plugins = ["plugins/notes"]       # plugin dirs to run; default: every plugin in the lockfile
    socket = "astridd.sock"           # relative to home
    kv = "surrealkv://kv"             # surrealkv://PATH (relative to home), mem://, ws://..., none
    compile_cache = true              # cache compiled components under home/cache
    guest_threads = 2                 # worker threads running guest code at once
    epoch_tick_ms = 10
    log_level = "info"                # trace, debug, info, warn, error
    log_format = "json"               # json or text
    nats = "nats://127.0.0.1:4222"    # optional: bridge the bus to NATS
    nats_subscribe = [">"]            # topics to take in from NATS
    nats_token_file = "nats.token"    # the NATS server's auth token (relative to home; 0600)

    [[nats_peer]]                     # a kernel whose signed messages this one believes
    kernel = "3b6a27bc…"              # its ed25519 key (hex; astridd logs its own at start)
    publish = ["notes.>"]             # where it may publish on this bus (default: nowhere)
    allow_wildcard_grants = true      # false: refuse any plugin granted a `*` or `>` pattern

    [recording]                       # the recorded bus (astrid log/show/replay): enabled,
    max_events = 100000               # url (default surrealkv://recording), max_events, flush_ms

    [ceilings]                        # the most any plugin may be granted (same keys as a
    call_timeout_ms = 5000            # manifest's [limits]; default: grants.DEFAULT_CEILINGS)
    max_crashes = 5

Every key is optional; `astridd` with no config file runs with these defaults.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from astrid_runtime.bus.nats.wire import Peer
from astrid_runtime.errors import ConfigError, KernelError
from astrid_runtime.grants import DEFAULT_CEILINGS, DEFAULT_POLICY, GrantPolicy
from astrid_runtime.manifest import parse_limits
from astrid_runtime.recorder.settings import (
    DEFAULT_RECORDING,
    RecordingSettings,
    parse_settings,
)
from astrid_runtime.tomlfile import TomlDoc

_KEYS = {"home", "lockfile", "plugins", "socket", "kv", "compile_cache", "guest_threads",
         "epoch_tick_ms", "log_level", "log_format", "nats", "nats_subscribe",
         "allow_wildcard_grants", "ceilings", "nats_token_file", "nats_peer", "recording"}


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def default_home() -> Path:
    env = os.environ.get("ASTRID_HOME")
    return Path(env).expanduser() if env else Path("~/.local/share/astrid").expanduser()


@dataclass(frozen=True)
class KernelConfig:
    home: Path
    lockfile: Path
    plugins: tuple[Path, ...] | None
    socket: Path
    kv_url: str | None
    compile_cache: bool = True
    guest_threads: int = 2
    epoch_tick_ms: int = 10
    log_level: str = "info"
    log_format: str = "json"
    nats: str | None = None
    nats_subscribe: tuple[str, ...] = (">",)
    #: Ceilings on every plugin's limits and whether wildcard grants are allowed.
    grant_policy: GrantPolicy = DEFAULT_POLICY
    #: File holding the NATS server's auth token (None: connect without one).
    nats_token_file: Path | None = None
    #: Kernels whose signed bridged messages are believed, and where they may publish.
    nats_peers: tuple[Peer, ...] = ()
    #: The recorded bus (`[recording]`; recorder/settings.py).
    recording: RecordingSettings = DEFAULT_RECORDING

    @property
    def cache_dir(self) -> Path | None:
        return self.home / "cache" if self.compile_cache else None


def default_socket(home: Path | None = None) -> Path:
    env = os.environ.get("ASTRID_SOCKET")
    return Path(env) if env else (home or default_home()) / "astridd.sock"


def defaults(home: Path | None = None) -> KernelConfig:
    home = home or default_home()
    return KernelConfig(home=home, lockfile=Path("plugins.lock").resolve(), plugins=None,
                        socket=default_socket(home), kv_url=f"surrealkv://{home / 'kv'}")


def _kv_url(value: str, home: Path) -> str | None:
    if value == "none":
        return None
    if value.startswith("surrealkv://"):
        path = Path(value.removeprefix("surrealkv://")).expanduser()
        return f"surrealkv://{path if path.is_absolute() else home / path}"
    return value


def _peers(doc: TomlDoc, top: dict[str, object]) -> tuple[Peer, ...]:
    peers: list[Peer] = []
    for i, table in enumerate(doc.get(top, "nats_peer", list, [])):
        if not isinstance(table, dict):
            raise doc.fail("each [[nats_peer]] must be a table", "nats_peer", None, i)
        doc.unknown_keys(table, {"kernel", "publish"}, "nats_peer", i)
        kernel = doc.get(table, "kernel", str, "", table_name="nats_peer", index=i,
                         check=lambda v: None if _HEX64.match(v) else
                         "must be a kernel's 64 hex digit key")
        if not kernel:
            raise doc.fail("[[nats_peer]] is missing 'kernel'", "nats_peer", None, i)
        publish = doc.string_list(table, "publish", table_name="nats_peer", index=i)
        try:
            peers.append(Peer(kernel, publish))
        except KernelError as e:
            raise doc.fail(f"publish: {e}", "nats_peer", "publish", i) from None
    return tuple(peers)


def load_config(path: Path) -> KernelConfig:
    """Parse `astridd.toml`; errors name the file and line."""
    doc = TomlDoc.load(path)
    t = doc.data
    doc.unknown_keys(t, _KEYS)
    base = path.parent.resolve()
    home_s = doc.get(t, "home", str, None)
    home = Path(home_s).expanduser() if home_s else default_home()
    if not home.is_absolute():
        home = base / home
    lock = base / doc.get(t, "lockfile", str, "plugins.lock")
    plugins: tuple[Path, ...] | None = None
    if "plugins" in t:
        plugins = tuple((base / p).resolve() for p in doc.string_list(t, "plugins"))
    sock_s = doc.get(t, "socket", str, None)
    sock = (home / sock_s) if sock_s else default_socket(home)
    kv = _kv_url(doc.get(t, "kv", str, "surrealkv://kv"), home)
    level = doc.get(t, "log_level", str, "info", check=lambda v: None if v in
                    ("trace", "debug", "info", "warn", "error") else "unknown level")
    fmt = doc.get(t, "log_format", str, "json",
                  check=lambda v: None if v in ("json", "text") else "must be json or text")
    threads = doc.get(t, "guest_threads", int, 2,
                      check=lambda v: None if v >= 1 else "must be at least 1")
    tick = doc.get(t, "epoch_tick_ms", int, 10,
                   check=lambda v: None if 1 <= v <= 1000 else "must be 1..1000")
    token_s = doc.get(t, "nats_token_file", str, None)
    token_file = (home / Path(token_s).expanduser()) if token_s else None
    policy = GrantPolicy(
        parse_limits(doc, doc.get(t, "ceilings", dict, {}), "ceilings", DEFAULT_CEILINGS),
        doc.get(t, "allow_wildcard_grants", bool, True))
    return KernelConfig(home=home, lockfile=lock.resolve(), plugins=plugins, socket=sock,
                        kv_url=kv, compile_cache=doc.get(t, "compile_cache", bool, True),
                        guest_threads=threads, epoch_tick_ms=tick, log_level=level,
                        log_format=fmt, nats=doc.get(t, "nats", str, None),
                        nats_subscribe=doc.string_list(t, "nats_subscribe") or (">",),
                        grant_policy=policy, nats_token_file=token_file,
                        nats_peers=_peers(doc, t),
                        recording=parse_settings(doc, doc.get(t, "recording", dict, {}), home))


__all__ = ["ConfigError", "KernelConfig", "default_home", "default_socket", "defaults",
           "load_config"]
