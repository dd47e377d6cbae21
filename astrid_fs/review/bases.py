"""The session's base: what every project entry was when the session began.

A copy-up records the fingerprint of the one lower entry it copied (its
`origin`), but a session also replaces lower entries without copying them
(an editor's save: temp file + rename over), deletes them (a whiteout), moves
other files over them, hides them under an opaque dir, and adds files where
the project may add the same name. None of those carries an origin, so
without a base nothing can tell "the session changed this" from "the user
changed this meanwhile". This index is that base, as git's index is: one row
per project entry (kind, inode, size, mtime, mode; the ETag for an object of
a mounted source), recorded when the session starts, refreshed for the
entries a commit lands and for those `update` takes in.

A mounted source is not walked when the session mounts: listing a bucket
of a million keys would hold the mount for minutes. `astrid-fs mount`
records its mount point as *pending* and the daemon walks it later
(review/remotebase.py says when), taking for every entry the session saw
before the walk got there what the session saw. Until then the base under
that point is UNKNOWN; `session_changes` (every review verb) waits for the
daemon's walk, or walks itself when no daemon is there
(`remotebase.complete_pending`).

Knows: how to record and look up fingerprints, and when an entry differs
from its base. Does not know: which changes need a base (conflicts.py) or
when to record one (cli, commit, update). The index lives in the session
dir as `bases.sqlite`; a session without one (made before this existed, or
over an upper another tool wrote) has an unknown base and no such checks.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from astrid_fs.drivers.base import EntryStat, LowerDriver, join_rel
from astrid_fs.drivers.errors import NotADirectory, NotFound
from astrid_fs.overlay.layers import COMMIT_STAGING_PREFIX, lstat_or_none
from astrid_fs.overlay.whiteout import kind_of_mode

if TYPE_CHECKING:
    from astrid_fs.review.lowers import SessionLowers

INDEX_NAME = "bases.sqlite"
_XDEV = "xdev"  # another filesystem mounted inside the lower: its contents are unknown
PENDING = "pending"  # a mounted source not walked yet (remotebase.py): unknown until it is
_SCHEMA = ("CREATE TABLE IF NOT EXISTS base (path TEXT PRIMARY KEY, kind TEXT NOT NULL, "
           "ino INTEGER, size INTEGER, mtime_ns INTEGER, mode INTEGER, etag TEXT)")


@dataclass(frozen=True)
class Base:
    """A project entry as the session's base recorded it (None fields: not known)."""

    kind: str
    ino: int | None = None
    size: int | None = None
    mtime_ns: int | None = None
    mode: int | None = None
    etag: str | None = None

    @classmethod
    def of_stat(cls, st: os.stat_result) -> Base:
        return cls(kind_of_mode(st.st_mode), st.st_ino, st.st_size, st.st_mtime_ns,
                   st.st_mode)

    @classmethod
    def of_entry(cls, entry: EntryStat) -> Base:
        return cls("dir" if entry.is_dir else entry.kind, None, entry.size, None,
                   None, entry.etag)


class Unknown:
    """The base of an entry nothing recorded (no index, or under another fs)."""


UNKNOWN = Unknown()
Found = Base | Unknown | None  # None: the entry was absent from the base


def same_local(base: Base | None, now: Base | None) -> bool:
    """Is the lower entry `now` (as `Base.of_stat` makes it) the one the base
    recorded (absent = absent)? A dir counts as the same while it is the same
    inode (its mtime moves with its children); anything else by (kind, ino,
    size, mtime, mode)."""
    if base is None or now is None:
        return base is None and now is None
    if now.kind != base.kind:
        return False
    if base.kind == "dir":
        return base.ino is None or base.ino == now.ino
    return (base.ino, base.size, base.mtime_ns, base.mode) == (
        now.ino, now.size, now.mtime_ns, now.mode)


def same_remote(base: Base | None, now: Base | None) -> bool:
    """Is the source's entry `now` (as `Base.of_entry` makes it) the one the
    base recorded? Objects by ETag (or size where the source gives none);
    dirs by kind."""
    if base is None or now is None:
        return base is None and now is None
    kind = now.kind
    if kind != base.kind:
        return False
    if kind == "dir":
        return True
    if base.etag is not None or now.etag is not None:
        return base.etag == now.etag
    return base.size == now.size


class BaseIndex:
    """The recorded base of one session (an open sqlite database)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.execute(_SCHEMA)
        self._unknown: list[str] | None = None
        self._in_batch = False

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> BaseIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, path: str) -> Found:
        """The base of session path `path`: a Base, None (absent from the
        project when the session began) or UNKNOWN."""
        if self._unknown is None:
            self._unknown = [r[0] for r in self.db.execute(
                "SELECT path FROM base WHERE kind IN (?, ?)", (_XDEV, PENDING))]
        if any(path == x or path.startswith(x + "/") for x in self._unknown):
            return UNKNOWN
        row = self.db.execute("SELECT kind, ino, size, mtime_ns, mode, etag FROM base "
                              "WHERE path = ?", (path,)).fetchone()
        return None if row is None else Base(*row)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Make every `put` and `forget_tree` inside one transaction (one
        sync of the database instead of one per call)."""
        with self.db:
            self._in_batch = True
            try:
                yield
            finally:
                self._in_batch = False

    def _txn(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext() if self._in_batch else self.db

    def put(self, rows: Iterable[tuple[str, Base | None]], replace: bool = True) -> None:
        """Record (or, for None, forget) the base of each path, in one
        transaction; with `replace=False` a path that has a row keeps it."""
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        with self._txn():
            for path, base in rows:
                if base is None:
                    self.db.execute("DELETE FROM base WHERE path = ?", (path,))
                else:
                    self.db.execute(
                        f"{verb} INTO base VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (path, base.kind, base.ino, base.size, base.mtime_ns, base.mode,
                         base.etag))
        self._unknown = None

    def forget_tree(self, path: str) -> None:
        """Drop the rows of `path` and everything below it."""
        with self._txn():
            self.db.execute("DELETE FROM base WHERE path = ? OR substr(path, 1, ?) = ?",
                            (path, len(path) + 1, path + "/"))
        self._unknown = None


def index_path(session_root: Path) -> Path:
    return session_root / INDEX_NAME


def open_index(session_root: Path) -> BaseIndex | None:
    """The session's base index, or None if it never recorded one."""
    path = index_path(session_root)
    return BaseIndex(path) if path.exists() else None


def walk_local(lower: Path, rel: str = "") -> Iterator[tuple[str, Base]]:
    """(session path, Base) for `lower/rel` and everything below it, not
    crossing into other filesystems (those are recorded as unknown)."""
    top = lower / rel if rel else lower
    root_st = lstat_or_none(os.fspath(top))
    if root_st is None:
        return
    if rel:
        yield rel, Base.of_stat(root_st)
    if not stat.S_ISDIR(root_st.st_mode):
        return
    dev = os.lstat(lower).st_dev
    stack = [rel]
    staging = COMMIT_STAGING_PREFIX.decode()
    while stack:
        here = stack.pop()
        try:
            with os.scandir(lower / here if here else lower) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for e in entries:
            if not here and e.name.startswith(staging):
                continue
            path = f"{here}/{e.name}" if here else e.name
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_dev != dev:
                yield path, Base(_XDEV)
                continue
            yield path, Base.of_stat(st)
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)


def walk_source(driver: LowerDriver, rel: str = "", stop: threading.Event | None = None,
                pace: Callable[[], None] | None = None) -> Iterator[tuple[str, EntryStat]]:
    """(path in the source, entry) for everything below `rel`, one listing
    per directory (`pace` called before each), ending early once `stop` is
    set. A directory gone between its parent's listing and its own is
    skipped (it is not in the source any more)."""
    todo = [rel]
    while todo:
        if pace is not None:
            pace()
        if stop is not None and stop.is_set():
            return
        here = todo.pop()
        try:
            entries = driver.list_dir(here)
        except (NotFound, NotADirectory):
            if here == rel:
                raise
            continue
        for name, entry in entries:
            sub = join_rel(here, name)
            yield sub, entry
            if entry.is_dir:
                todo.append(sub)


def walk_remote(driver: LowerDriver, point: str, rel: str = "") -> Iterator[tuple[str, Base]]:
    """(session path, Base) for every entry of a mounted source below `rel`
    (`point`: where the source is mounted in the session, "mnt/s3")."""
    for sub, entry in walk_source(driver, rel):
        yield f"{point}/{sub}", Base.of_entry(entry)


def record(session_root: Path, lower: Path,
           remotes: Iterable[tuple[str, LowerDriver]] = (),
           pending: Iterable[str] = ()) -> None:
    """Record the whole base afresh (the lower tree, then each mounted source;
    each of the `pending` mount points is only marked, for a later walk),
    replacing any earlier index at once (built aside, then renamed)."""
    final = index_path(session_root)
    tmp = final.with_name(final.name + ".tmp")
    tmp.unlink(missing_ok=True)
    index = BaseIndex(tmp)
    try:
        index.put(walk_local(lower))
        for point, driver in remotes:
            index.put(walk_remote(driver, point))
        index.put((point, Base(PENDING)) for point in pending)
    finally:
        index.close()
    os.replace(tmp, final)


def record_if_fresh(session_root: Path, lower: Path, upper: Path) -> bool:
    """Record the base when the session has none yet or holds no change (an
    empty upper): what the session starts from is the project as it is now.
    An index under changes is kept: those changes were made against it.
    Mounted sources are left pending, for the daemon to walk (remotebase.py)."""
    if index_path(session_root).exists() and any(os.scandir(upper)):
        return False
    from astrid_fs.review.lowers import recorded_table

    table = recorded_table(session_root)
    record(session_root, lower, pending=[] if table is None else
           [e.rel for e in table.remotes()])
    return True


def _record_all(session_root: Path, lower: Path) -> None:
    # Imported here: the lowers open drivers, which only this step needs.
    from astrid_fs.review.lowers import SessionLowers

    lowers = SessionLowers.open(session_root, lower)
    try:
        record(session_root, lower, [(e.rel, lowers.drivers[e.path])
                                     for e in lowers.table.remotes()])
    finally:
        lowers.close()


def rerecord(session_root: Path, lower: Path, keep: dict[str, bool]) -> None:
    """Record the base afresh, except for the paths in `keep`, which keep
    the base they had (with True: their whole subtree, exactly as it was,
    so an entry the project added below a dir the session deletes still
    reads as added). Without an index, nothing is done."""
    old = open_index(session_root)
    if old is None:
        return
    saved: list[tuple[str, bool, list[tuple[str, Base | None]]]] = []
    try:
        for path, tree in sorted(keep.items()):
            found = old.lookup(path)
            if isinstance(found, Unknown):
                continue
            rows: list[tuple[str, Base | None]] = [(path, found)]
            if tree:
                rows += [(r[0], Base(*r[1:])) for r in old.db.execute(
                    "SELECT path, kind, ino, size, mtime_ns, mode, etag FROM base "
                    "WHERE substr(path, 1, ?) = ?", (len(path) + 1, path + "/"))]
            saved.append((path, tree, rows))
    finally:
        old.close()
    _record_all(session_root, lower)
    new = BaseIndex(index_path(session_root))
    try:
        for path, tree, rows in saved:
            if tree:
                new.forget_tree(path)
            new.put(rows)
    finally:
        new.close()


def rebase_paths(session_root: Path, lower: Path, paths: Iterable[str]) -> None:
    """Make the project as it is now the base of `paths` and everything below
    them (the lower dir, or the mounted source a path lies under)."""
    index = open_index(session_root)
    if index is None:
        return
    from astrid_fs.review.lowers import SessionLowers

    lowers = SessionLowers.open(session_root, lower)
    try:
        with index.batch():
            for path in sorted(set(paths)):
                _rebase_one(index, lowers, lower, path)
    finally:
        lowers.close()
        index.close()


def _rebase_one(index: BaseIndex, lowers: SessionLowers, lower: Path, path: str) -> None:
    r = lowers.resolve(path)
    index.forget_tree(path)
    if r.entry.path == "/":
        index.put(walk_local(lower, path))
        return
    now = r.driver.stat(r.rel)
    if now is not None:
        index.put([(path, Base.of_entry(now))])
        if now.is_dir:
            index.put(walk_remote(r.driver, r.entry.path.strip("/"), r.rel))
