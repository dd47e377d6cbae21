"""What a session saw of a mounted source before its base was walked.

The daemon's cache tells `FirstSeen` (its `CachingDriver.observer`) every
stat and listing it fetched; the first sight of each path is kept, present
or absent, in order, so that the base walk (remotebase.py) can take what
the session saw over what the walk finds. Sights outlive the daemon when it
unmounts before the walk (`save_sights` into the session's base index,
`load_sights` by the next daemon or by the review verb that walks): only a
daemon killed outright loses them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from astrid_fs.drivers.base import EntryStat, join_rel, parent_rel
from astrid_fs.review.bases import open_index

MISSING = object()  # never seen
MAX_SIGHTS = 200_000  # sights kept before the walk starts anyway (~200 bytes each)
_TABLE = "CREATE TABLE IF NOT EXISTS sights (point TEXT PRIMARY KEY, data TEXT NOT NULL)"


class FirstSeen:
    """What the session saw of one source, first sight of each path kept.
    Thread-safe; never raises (it is called inside the cache's fetches)."""

    def __init__(self, on_full: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = False
        self._on_full = on_full  # called once MAX_SIGHTS paths were seen
        # path -> (when, stat or None: seen absent)
        self.stats: dict[str, tuple[int, EntryStat | None]] = {}
        # dir -> (when, the names its first listing had)
        self.listed: dict[str, tuple[int, frozenset[str]]] = {}

    def saw_stat(self, rel: str, found: EntryStat | None) -> None:
        with self._lock:
            if not self._closed:
                self._seq += 1
                self.stats.setdefault(rel, (self._seq, found))
        self._check_full()

    def saw_listing(self, rel: str, entries: list[tuple[str, EntryStat]]) -> None:
        with self._lock:
            if self._closed:
                return
            self._seq += 1
            self.listed.setdefault(rel, (self._seq, frozenset(n for n, _ in entries)))
            for name, st in entries:
                self.stats.setdefault(join_rel(rel, name), (self._seq, st))
        self._check_full()

    def _check_full(self) -> None:
        if self._on_full is not None and len(self.stats) >= MAX_SIGHTS:
            on_full, self._on_full = self._on_full, None
            on_full()

    def close(self) -> None:
        """Stop recording (the walk is about to be merged)."""
        with self._lock:
            self._closed = True

    def clear(self) -> None:
        """Drop the sights (merged into the base)."""
        with self._lock:
            self.stats.clear()
            self.listed.clear()

    def first(self, rel: str) -> object:
        """What the session first saw at `rel`: an EntryStat, None (absent)
        or `MISSING` (never seen)."""
        sights = []
        stat = self.stats.get(rel)
        if stat is not None:
            sights.append(stat)
        if rel:
            listing = self.listed.get(parent_rel(rel))
            if listing is not None and rel.rpartition("/")[2] not in listing[1]:
                sights.append((listing[0], None))
        return min(sights, key=lambda s: s[0])[1] if sights else MISSING

    def present(self) -> Iterator[tuple[str, EntryStat]]:
        """Every path the session first saw present (the root excepted)."""
        for rel in list(self.stats):
            first = self.first(rel)
            if rel and isinstance(first, EntryStat):
                yield rel, first

    def under_absent(self, rel: str) -> bool:
        """Was a directory above `rel` first seen absent?"""
        while rel:
            rel = parent_rel(rel)
            if rel and self.first(rel) is None:
                return True
        return False


def save_sights(session_root: Path, point: str, seen: FirstSeen) -> None:
    """Keep `seen` in the session's base index, for mount point `point`
    (replacing what was kept for it)."""
    index = open_index(session_root)
    if index is None:
        return
    with seen._lock:
        data = json.dumps({
            "stats": [[rel, seq, None if st is None else
                       [st.kind, st.size, st.mtime_ns, st.mode, st.ino, st.etag]]
                      for rel, (seq, st) in seen.stats.items()],
            "listed": [[rel, seq, sorted(names)] for rel, (seq, names) in seen.listed.items()],
        })
    try:
        with index.db:
            index.db.execute(_TABLE)
            index.db.execute("INSERT OR REPLACE INTO sights VALUES (?, ?)", (point, data))
    finally:
        index.close()


def load_sights(session_root: Path, point: str,
                on_full: Callable[[], None] | None = None) -> FirstSeen:
    """The sights kept for `point` (none: an empty FirstSeen)."""
    seen = FirstSeen(on_full)
    index = open_index(session_root)
    if index is None:
        return seen
    try:
        index.db.execute(_TABLE)
        row = index.db.execute("SELECT data FROM sights WHERE point = ?", (point,)).fetchone()
    finally:
        index.close()
    if row is None:
        return seen
    data = json.loads(row[0])
    for rel, seq, st in data["stats"]:
        seen.stats[rel] = (seq, None if st is None else EntryStat(*st))
    for rel, seq, names in data["listed"]:
        seen.listed[rel] = (seq, frozenset(names))
    seen._seq = max([0, *(s for s, _ in seen.stats.values()),
                     *(s for s, _ in seen.listed.values())])
    return seen


def forget_sights(db: sqlite3.Connection, point: str) -> None:
    """Drop what was kept for `point` (inside the caller's transaction on
    the index's connection `db`)."""
    db.execute(_TABLE)
    db.execute("DELETE FROM sights WHERE point = ?", (point,))
