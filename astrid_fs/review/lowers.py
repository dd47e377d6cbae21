"""The drivers behind a session's lower layer, by virtual path: what diff and
commit need to see and write the sources a mount table names.

`SessionLowers.open(session_root, lower)` reads the table the session
recorded (`mounts.toml`, see remote_lower.prepare_session_mounts), or just
`/` <- the lower directory when there is none, and opens each entry's driver
with its wrappers (cache for remote sources, read-only where the table says
so). `resolve(vrel)` maps a path relative to the session root (as the upper
layer has it, e.g. "mnt/s3/data/x.csv") to the driver serving it and the
path inside its source. Opening makes no network call; `check()` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from astrid_fs.drivers.base import EntryStat, LowerDriver
from astrid_fs.drivers.registry import Registry
from astrid_fs.mounttable import MountEntry, MountTable, open_entry
from astrid_fs.overlay.remote import SESSION_TABLE


@dataclass(frozen=True)
class Resolved:
    """One virtual path: the entry and driver serving it, the path in its source."""

    entry: MountEntry
    driver: LowerDriver
    rel: str

    @property
    def remote_path(self) -> str:
        """How to show it to a person: the source URL joined with the path."""
        base = self.entry.source.rstrip("/")
        return f"{base}/{self.rel}" if self.rel else base


def recorded_table(session_root: Path, registry: Registry | None = None) -> MountTable | None:
    """The mount table the session recorded, or None (no mounted sources)."""
    recorded = session_root / SESSION_TABLE
    return MountTable.load(recorded, registry) if recorded.exists() else None


class SessionLowers:
    """The opened drivers of one session's mount table."""

    def __init__(self, table: MountTable, registry: Registry | None = None) -> None:
        registry = registry or Registry()
        self.table = table
        self.drivers = {e.path: open_entry(e, registry) for e in table.entries}

    @classmethod
    def open(cls, session_root: Path, lower: Path,
             registry: Registry | None = None) -> SessionLowers:
        table = recorded_table(session_root, registry) or MountTable(())
        return cls(table.with_root(lower), registry)

    def resolve(self, vrel: str) -> Resolved:
        """The driver for `vrel` (relative to the session root; "" is the root)."""
        hit = self.table.resolve("/" + vrel.strip("/"))
        assert hit is not None, "a table with a root entry resolves every path"
        entry, rel = hit
        return Resolved(entry, self.drivers[entry.path], rel)

    def is_remote(self, vrel: str) -> bool:
        return self.resolve(vrel).entry.path != "/"

    def stat(self, vrel: str) -> EntryStat | None:
        r = self.resolve(vrel)
        return r.driver.stat(r.rel)

    def read(self, vrel: str, limit: int) -> tuple[bytes | None, int | None]:
        """(content, st_mode) of the source's entry at `vrel` for a patch: a
        file's first `limit` + 1 bytes, a symlink's target and a newline,
        (None, mode) for anything else, (None, None) when nothing is there."""
        r = self.resolve(vrel)
        entry = r.driver.stat(r.rel)
        if entry is None:
            return None, None
        if entry.kind == "symlink":
            return r.driver.readlink(r.rel).encode() + b"\n", entry.mode
        if entry.kind != "file":
            return None, entry.mode
        reader = r.driver.open_reader(r.rel, entry)
        try:
            chunks: list[bytes | memoryview] = []
            offset, want = 0, min(entry.size, limit + 1)
            while offset < want:
                chunk = reader.pread(min(1 << 20, want - offset), offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
        finally:
            reader.close()
        return b"".join(chunks), entry.mode

    def fingerprint(self, vrel: str) -> str | None:
        """A fresh fingerprint (S3: ETag) to compare with a copy-up's origin."""
        r = self.resolve(vrel)
        return r.driver.fingerprint(r.rel)

    def check(self) -> None:
        for driver in self.drivers.values():
            driver.check()

    def close(self) -> None:
        for driver in self.drivers.values():
            driver.close()
