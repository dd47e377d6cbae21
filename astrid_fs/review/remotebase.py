"""The base of a mounted source, recorded by the mount daemon in the background.

Walking a source to record its base (review/bases.py) takes one LIST per
directory page: seconds for ten thousand keys, minutes for a million. So
`astrid-fs mount` marks each mount point *pending* and serves at once; the
daemon walks the pending points in a thread (`BaseWalker`) and writes each
point's rows in one transaction when its walk ends.

The session may meanwhile look at entries the walk has not reached, and the
project may change them. What the session's changes were made against is
what it saw, so that is the base: every stat and listing the daemon's cache
fetched (`FirstSeen`, the `CachingDriver.observer`) is kept, first sight
first, and wins over the walk's rows (`merge`):
- an entry the session saw present has the base it saw, even if the walk
  found another version or nothing (a conflict then shows at commit);
- an entry the session saw absent (a failed stat, a listing without it, or
  under a directory seen absent) is absent from the base;
- an entry the session never saw has what the walk found.
Sights after a point's walk ended are not needed: the base is then written.

When the walk runs: it competes with the session's own requests (on
s3rver, which lists by walking every key, a walk right after the mount took
the S3 bench's first byte from 5 to 120 ms; one that waits, before each
directory, for the session to leave the source alone for `QUIET_S` still
cost a quarter of the read throughput, as a directory's LIST pages cannot
be paused). So by default it starts when a review verb first waits for it
(`wait`), or once the session has seen `sights.MAX_SIGHTS` entries, which bounds
the memory the sights take; the daemon's `ASTRID_FS_BASE_WALK=background`
starts it at the mount, pausing for a quiet source (`QUIET_S`). A verb
waiting makes it walk without pauses. For entries the session never saw,
the base is then the source as the walk finds it, later than the mount:
changes the project made to those meanwhile are not conflicts; they cannot
be, as the session did not change what it never saw (a LOOKUP, hence a
sight, comes before any change).

A daemon unmounted before its walk keeps the sights in the index
(sights.py) and leaves the point pending; the next review verb walks it
(`complete_pending`) with them. A daemon killed outright loses them: that
verb's walk has only the source as it is then.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from astrid_fs.drivers.base import EntryStat
from astrid_fs.drivers.errors import DriverError
from astrid_fs.overlay.layers import RemoteTree
from astrid_fs.overlay.remote import DriverTree
from astrid_fs.review.bases import PENDING, Base, open_index, walk_source
from astrid_fs.review.sights import MISSING, FirstSeen, forget_sights, load_sights, save_sights

log = logging.getLogger("astrid_fs.remotebase")

_STAGE = ("CREATE TABLE IF NOT EXISTS walk_rows (point TEXT NOT NULL, path TEXT NOT NULL, "
          "kind TEXT NOT NULL, ino INTEGER, size INTEGER, mtime_ns INTEGER, mode INTEGER, "
          "etag TEXT)")
_BATCH = 5000

QUIET_S = 1.0  # the walk lists a directory once the session left the source alone this long


def pending_points(session_root: Path) -> list[str]:
    """The mount points whose base is still to be walked."""
    index = open_index(session_root)
    if index is None:
        return []
    try:
        return [r[0] for r in index.db.execute(
            "SELECT path FROM base WHERE kind = ? ORDER BY path", (PENDING,))]
    finally:
        index.close()


def stage_rows(session_root: Path, point: str, rows: Iterable[tuple[str, Base]]) -> int:
    """Write a walk's rows for `point` aside (the `walk_rows` table), in
    short transactions of `_BATCH` rows: a walk of a big source holds
    neither its rows in memory nor the index's write lock. Returns how many."""
    index = open_index(session_root)
    if index is None:
        return 0
    count = 0
    try:
        with index.db:
            index.db.execute(_STAGE)
            index.db.execute("DELETE FROM walk_rows WHERE point = ?", (point,))
        left = iter(rows)
        while batch := [(point, path, b.kind, b.ino, b.size, b.mtime_ns, b.mode, b.etag)
                        for path, b in itertools.islice(left, _BATCH)]:
            with index.db:
                index.db.executemany("INSERT INTO walk_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                     batch)
            count += len(batch)
        return count
    finally:
        index.close()


def finish_point(session_root: Path, point: str, seen: FirstSeen | None = None) -> bool:
    """Put the staged rows of `point`, and every entry `seen` shows present
    that the walk did not find (seen, then gone before the walk got there),
    in place of its pending mark, in one transaction; False (nothing
    written) when the point is no longer pending (someone else completed
    or re-recorded it meanwhile)."""
    index = open_index(session_root)
    if index is None:
        return False
    try:
        with index.batch():
            # (the check and the write in one write transaction: a verb's own
            # walk and the daemon's cannot both write)
            index.db.execute("BEGIN IMMEDIATE")
            index.db.execute(_STAGE)
            still = index.db.execute("SELECT kind FROM base WHERE path = ?",
                                     (point,)).fetchone()
            if still is not None and still[0] == PENDING:
                index.forget_tree(point)
                index.db.execute(
                    "INSERT OR REPLACE INTO base SELECT path, kind, ino, size, mtime_ns, mode, "
                    "etag FROM walk_rows WHERE point = ?", (point,))
                if seen is not None:
                    index.put(((f"{point}/{rel}", Base.of_entry(st)) for rel, st in seen.present()),
                              replace=False)
                forget_sights(index.db, point)
            index.db.execute("DELETE FROM walk_rows WHERE point = ?", (point,))
        return still is not None and still[0] == PENDING
    finally:
        index.close()


def complete_point(session_root: Path, point: str, rows: Iterable[tuple[str, Base]],
                   seen: FirstSeen | None = None) -> bool:
    """`stage_rows`, then `finish_point`."""
    stage_rows(session_root, point, rows)
    return finish_point(session_root, point, seen)


def complete_pending(session_root: Path, lower: Path) -> list[str]:
    """Walk, here and now, every mount point still pending (no daemon walked
    it: a mount unmounted, or killed, before its walk). Returns those points.
    What the session saw wins, as in the daemon's walk: its daemon kept the
    sights at unmount (sights.py); a killed daemon's are lost."""
    points = pending_points(session_root)
    if not points:
        return []
    from astrid_fs.review.lowers import SessionLowers

    lowers = SessionLowers.open(session_root, lower)
    try:
        for point in points:
            r = lowers.resolve(point)
            seen = load_sights(session_root, point)
            complete_point(session_root, point, _rows(point, walk_source(r.driver, r.rel), seen),
                           seen)
    finally:
        lowers.close()
    return points


Entries = Iterator[tuple[str, EntryStat]]


def merge(walked: Iterable[tuple[str, EntryStat]], seen: FirstSeen) -> Entries:
    """The walk's entries (paths in the source), each as the session first
    saw it if it did (module docstring); streamed. What the session saw and
    the walk did not find is added by `finish_point` (`seen.present()`)."""
    for rel, st in walked:
        first = seen.first(rel)
        if first is MISSING:
            if not seen.under_absent(rel):
                yield rel, st
        elif isinstance(first, EntryStat):
            yield rel, first


def _rows(point: str, walked: Iterable[tuple[str, EntryStat]], seen: FirstSeen
          ) -> Iterator[tuple[str, Base]]:
    """`merge` as base rows of mount point `point`."""
    return ((f"{point}/{rel}", Base.of_entry(st)) for rel, st in merge(walked, seen))


@dataclass
class _Point:
    point: str  # where the source is mounted in the session ("mnt/s3")
    tree: DriverTree  # its cache is observed; the walk lists its driver (not a sight)
    seen: FirstSeen
    done: bool = False


@dataclass
class WalkState:
    """What `BaseWalker.wait` reports (and the control socket passes on)."""

    pending: list[str] = field(default_factory=list)
    entries: int = 0
    error: str | None = None


class BaseWalker:
    """The background walk of one session's pending mount points."""

    def __init__(self, session_root: Path, points: list[_Point]) -> None:
        self.session_root = session_root
        self._points = points
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._urgent = False  # a review verb waits: no more pauses
        self._wake = threading.Event()  # set on stop() and once urgent
        self.paused = threading.Event()  # set once the walk waited for a quiet source
        self._finished = threading.Event()
        self._entries = 0
        self._error: str | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def attach(cls, session_root: Path | None,
               remotes: Iterable[tuple[bytes, RemoteTree]]) -> BaseWalker | None:
        """For a daemon about to serve: a walker for the session's pending
        points, each point's cache already observed (so that no sight is
        missed); None when nothing is pending."""
        if session_root is None:
            return None
        pending = set(pending_points(session_root))
        walker = cls(session_root, [])
        for rel, tree in remotes:
            point = rel.decode()
            if point in pending and isinstance(tree, DriverTree):
                seen = load_sights(session_root, point, on_full=walker.start)
                tree.cache.observer = seen
                walker._points.append(_Point(point, tree, seen))
        return walker if walker._points else None

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._error = None
            self._finished.clear()
            self._thread = threading.Thread(target=self._run, name="base-walk", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """At unmount: end the walk at the next directory (its point stays
        pending)."""
        self._stop.set()
        self._wake.set()

    def save(self) -> None:
        """At unmount, after `stop`: keep the sights of every point still
        pending, for whoever walks it (sights.py)."""
        pending = set(pending_points(self.session_root))
        for p in self._points:
            if p.point in pending:
                save_sights(self.session_root, p.point, p.seen)

    def _quiet(self, p: _Point) -> None:
        """Return once the session has left `p`'s source alone for
        QUIET_S (at once when urgent or stopping)."""
        while not self._urgent and not self._stop.is_set():
            left = p.tree.last_used + QUIET_S - time.monotonic()
            if left <= 0:
                return
            self.paused.set()
            self._wake.wait(left)

    def _run(self) -> None:
        try:
            for p in self._points:
                if p.done:
                    continue
                self._walk_one(p)
                if self._stop.is_set():
                    return
        except (DriverError, OSError) as e:
            with self._lock:
                self._error = str(e)
            log.warning("cannot record the session's base: %s", e)
        except Exception as e:  # a bug: reported as the walk's error, not lost
            log.exception("the base walk failed")
            with self._lock:
                self._error = f"{type(e).__name__}: {e}"
        finally:
            self._finished.set()

    def _walk_one(self, p: _Point) -> None:
        def counted(entries: Entries) -> Entries:
            for item in entries:
                self._entries += 1  # (this thread alone writes it)
                yield item

        walked = counted(walk_source(p.tree.cache.inner, "", self._stop,
                                     lambda: self._quiet(p)))
        staged = stage_rows(self.session_root, p.point, _rows(p.point, walked, p.seen))
        if self._stop.is_set():
            return  # (a partial walk: the staged rows are dropped by the next one)
        p.seen.close()
        if not finish_point(self.session_root, p.point, p.seen):
            log.info("base of %s recorded by someone else meanwhile", p.point)
        p.tree.cache.observer = None  # (sights are no longer needed)
        p.seen.clear()
        p.done = True
        log.info("recorded the session's base of %s (%d rows)", p.point, staged)

    def wait(self, timeout: float) -> WalkState:
        """Wait up to `timeout` s for the walk; one not started yet (walks on
        demand) or that failed is started first (a commit asking is a retry)."""
        self._urgent = True
        self._wake.set()
        with self._lock:
            idle = self._thread is None or (self._error is not None
                                            and self._finished.is_set())
        if idle:
            self.start()
        self._finished.wait(timeout)
        with self._lock:
            return WalkState([p.point for p in self._points if not p.done], self._entries,
                             self._error if self._finished.is_set() else None)
