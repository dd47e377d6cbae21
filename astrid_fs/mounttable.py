"""The mount table: which source shows at which virtual path of a session.

`mounts.toml` holds `[[mount]]` entries:

    [[mount]]
    path = "/mnt/s3"                 # virtual path, absolute
    source = "s3://bucket/prefix"    # driver chosen by the URL scheme
    read_only = true                 # commit refuses to write it back
    cache_mib = 256                  # data cache of a remote source (0: off)
    metadata_ttl_s = 30              # how stale a remote listing may be
    endpoint = "http://127.0.0.1:4568"   # any other key: a driver option
    region = "us-east-1"

The longest path prefix wins; `/` is usually the project directory (a plain
or relative path; relative sources resolve against the file's directory).
Bad input is one line naming the file and line: TOML syntax (tomllib's
position), and meaning (a relative or duplicate path, an unknown driver or
option). A session records its table with `to_toml`, which holds no
credentials: drivers refuse secret-looking options, and take credentials
from their own chains (AWS: environment, ~/.aws, profile).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astrid_fs.drivers.base import LowerDriver, OptionValue
from astrid_fs.drivers.cache import CacheConfig, CachingDriver
from astrid_fs.drivers.errors import DriverError
from astrid_fs.drivers.readahead import MIB
from astrid_fs.drivers.readonly import ReadOnlyDriver
from astrid_fs.drivers.registry import Registry, scheme_of
from astrid_fs.durable import write_atomic
from astrid_fs.errors import UsageError

DEFAULT_CACHE_MIB = 256
DEFAULT_METADATA_TTL_S = 30.0
_TABLE_KEYS = {"path", "source", "read_only", "cache_mib", "metadata_ttl_s"}
_HEADER = re.compile(r"^\s*\[\[\s*mount\s*\]\]")
_TOML_POS = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$")


@dataclass(frozen=True)
class MountEntry:
    """One `[[mount]]`: a virtual path, a source, the table-level settings and
    the driver's own options (sorted (key, value) pairs)."""

    path: str
    source: str
    driver: str
    read_only: bool = False
    cache_mib: int = DEFAULT_CACHE_MIB
    metadata_ttl_s: float = DEFAULT_METADATA_TTL_S
    options: tuple[tuple[str, OptionValue], ...] = ()
    line: int | None = field(default=None, compare=False)

    @property
    def rel(self) -> str:
        """The virtual path relative to the session root ("" for /)."""
        return self.path.strip("/")

    def option_map(self) -> dict[str, OptionValue]:
        return dict(self.options)


def normalize_path(raw: str) -> str:
    """'/mnt/s3/' -> '/mnt/s3'; ValueError for relative paths or '.'/'..'."""
    if not raw.startswith("/"):
        raise ValueError(f"path {raw!r} must be absolute (start with '/')")
    parts = [p for p in raw.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"path {raw!r} may not contain '.' or '..'")
    return "/" + "/".join(parts)


def _toml_value(value: OptionValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


class _Lines:
    """Line numbers of entries and keys in the source text (for messages)."""

    def __init__(self, origin: str, text: str) -> None:
        self.origin = origin
        self.lines = text.splitlines()
        self.headers = [i + 1 for i, line in enumerate(self.lines) if _HEADER.match(line)]

    def of(self, index: int, key: str | None = None) -> int | None:
        if index >= len(self.headers):
            return None
        start = self.headers[index]
        if key is None:
            return start
        end = self.headers[index + 1] if index + 1 < len(self.headers) else len(self.lines) + 1
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for n in range(start, end - 1):
            if pattern.match(self.lines[n]):
                return n + 1
        return start

    def error(self, index: int, key: str | None, message: str) -> UsageError:
        line = self.of(index, key)
        where = f"{self.origin}:{line}" if line else f"{self.origin} (mount entry {index + 1})"
        return UsageError(f"{where}: {message}")


@dataclass(frozen=True)
class MountTable:
    """Entries sorted by path; `resolve` picks the longest matching prefix."""

    entries: tuple[MountEntry, ...]

    # ---- parsing -----------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, registry: Registry | None = None) -> MountTable:
        """Parse a mounts.toml file (relative local sources resolve beside it)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"mount table {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read mount table {path}: {e}") from None
        return cls.from_toml(text, origin=str(path), base_dir=path.parent.absolute(),
                             registry=registry)

    @classmethod
    def from_toml(cls, text: str, origin: str = "mounts.toml", base_dir: Path | None = None,
                  registry: Registry | None = None) -> MountTable:
        """Parse mounts.toml text; UsageError names the line of the first problem."""
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = _TOML_POS.match(str(e))
            if m:
                raise UsageError(f"{origin}:{m.group(2)}: {m.group(1)}") from None
            raise UsageError(f"{origin}: {e}") from None
        lines = _Lines(origin, text)
        for key in raw:
            if key != "mount":
                raise UsageError(f"{origin}: unknown top-level key {key!r} "
                                 "(a table has only [[mount]] entries)")
        mounts = raw.get("mount", [])
        if not isinstance(mounts, list):
            raise UsageError(f"{origin}: 'mount' must be a list of [[mount]] tables")
        registry = registry or Registry()
        entries: list[MountEntry] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(mounts):
            if not isinstance(item, dict):
                raise lines.error(index, None, "each mount entry must be a table")
            entry = _entry(item, index, lines, base_dir, registry)
            if entry.path in seen:
                raise lines.error(index, "path", f"duplicate path {entry.path!r} (first at "
                                  f"line {seen[entry.path]})")
            seen[entry.path] = entry.line or 0
            entries.append(entry)
        return cls(tuple(sorted(entries, key=lambda e: e.path)))

    # ---- use ----------------------------------------------------------------------

    def resolve(self, vpath: str) -> tuple[MountEntry, str] | None:
        """The entry serving virtual path `vpath` and the path inside its source."""
        path = normalize_path(vpath)
        matches = [e for e in self.entries
                   if e.path == "/" or path == e.path or path.startswith(e.path + "/")]
        best = max(matches, key=lambda e: len(e.path), default=None)
        if best is None:
            return None
        rest = path[len(best.path):].strip("/") if best.path != "/" else path.strip("/")
        return best, rest

    def root(self) -> MountEntry | None:
        return next((e for e in self.entries if e.path == "/"), None)

    def with_root(self, project: Path) -> MountTable:
        """This table with `/` <- `project` if it has no `/` entry yet."""
        if self.root() is not None:
            return self
        entry = MountEntry("/", str(project.absolute()), "local", cache_mib=0)
        return MountTable(tuple(sorted((*self.entries, entry), key=lambda e: e.path)))

    def remotes(self) -> tuple[MountEntry, ...]:
        """Entries other than `/`, longest path first (the overlay's order)."""
        return tuple(sorted((e for e in self.entries if e.path != "/"),
                            key=lambda e: (-len(e.path), e.path)))

    def to_toml(self) -> str:
        """The table as mounts.toml text (absolute sources, no credentials)."""
        out = ["# astrid-fs mount table (written by astrid-fs; see docs/drivers.md)"]
        for e in self.entries:
            out += ["", "[[mount]]", f"path = {_toml_value(e.path)}",
                    f"source = {_toml_value(e.source)}"]
            if e.read_only:
                out.append("read_only = true")
            if e.cache_mib != DEFAULT_CACHE_MIB:
                out.append(f"cache_mib = {e.cache_mib}")
            if e.metadata_ttl_s != DEFAULT_METADATA_TTL_S:
                out.append(f"metadata_ttl_s = {_toml_value(e.metadata_ttl_s)}")
            out += [f"{k} = {_toml_value(v)}" for k, v in e.options]
        return "\n".join(out) + "\n"

    def write(self, path: Path) -> None:
        """Record the table at `path` atomically (e.g. a session's mounts.toml)."""
        write_atomic(path, self.to_toml().encode())


def _entry(item: Mapping[str, Any], index: int, lines: _Lines, base_dir: Path | None,
           registry: Registry) -> MountEntry:
    for key in ("path", "source"):
        if key not in item:
            raise lines.error(index, None, f"mount entry has no {key!r}")
        if not isinstance(item[key], str) or not item[key]:
            raise lines.error(index, key, f"{key!r} must be a non-empty string")
    try:
        path = normalize_path(item["path"])
    except ValueError as e:
        raise lines.error(index, "path", str(e)) from None
    source: str = item["source"]
    if scheme_of(source) == "" and not source.startswith(("/", "~")) and base_dir is not None:
        source = str((base_dir / source).resolve())
    read_only = item.get("read_only", False)
    if not isinstance(read_only, bool):
        raise lines.error(index, "read_only", "'read_only' must be true or false")
    cache_mib = item.get("cache_mib", DEFAULT_CACHE_MIB)
    if not isinstance(cache_mib, int) or isinstance(cache_mib, bool) or cache_mib < 0:
        raise lines.error(index, "cache_mib", "'cache_mib' must be a whole number >= 0")
    ttl = item.get("metadata_ttl_s", DEFAULT_METADATA_TTL_S)
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or ttl < 0:
        raise lines.error(index, "metadata_ttl_s", "'metadata_ttl_s' must be a number >= 0")
    options: dict[str, OptionValue] = {}
    for key, value in item.items():
        if key in _TABLE_KEYS:
            continue
        if not isinstance(value, str | int | float | bool):
            raise lines.error(index, key, f"option {key!r} must be a string, number or boolean")
        options[key] = value
    try:
        spec = registry.validate(source, options)
    except DriverError as e:
        bad = next((k for k in options if repr(k) in str(e)), None)
        raise lines.error(index, bad or "source", str(e)) from None
    return MountEntry(path, source, spec.name, read_only, cache_mib, float(ttl),
                      tuple(sorted(options.items())), lines.of(index))


def open_entry(entry: MountEntry, registry: Registry | None = None) -> LowerDriver:
    """Build the driver for `entry` with its wrappers: cache (remote sources),
    then read-only. Does not touch the network: call `check()` before mounting."""
    driver = (registry or Registry()).open(entry.source, entry.option_map())
    if driver.is_remote:
        driver = CachingDriver(driver, CacheConfig(metadata_ttl_s=entry.metadata_ttl_s,
                                                   data_bytes=entry.cache_mib * MIB))
    if entry.read_only:
        driver = ReadOnlyDriver(driver)
    return driver
