"""The review's side of base content (overlay/basecontent.py keeps it):
reading the project's version a session started from, replacing it when
the base moves (resolve --ours, a merge, update), and forgetting it when a
path leaves the session (commit, discard, rollback).

Keys are lower (project) paths, as the overlay writes them. A session made
before the database kept its copies as files under `SESSION/base-content/`;
the first look moves them into the database (the first copy stands).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from astrid_fs.overlay.basecontent import DB_NAME, LEGACY_DIR, LIMIT, connect
from astrid_fs.session import Session

__all__ = ["LIMIT", "Copy", "Kept", "forget", "forget_all", "kept", "open_kept", "prune", "read",
           "replace"]


@dataclass(frozen=True)
class Copy:
    """A kept base: the lower file's size and mtime when it was kept (None
    for one a resolve put there) and its bytes."""

    size: int
    mtime_ns: int | None
    body: bytes


class Kept:
    """Reads one session's kept copies (an open database, or none kept)."""

    def __init__(self, db: sqlite3.Connection | None) -> None:
        self.db = db

    def get(self, path: str) -> Copy | None:
        if self.db is None:
            return None
        row = self.db.execute("SELECT size, mtime_ns, body FROM kept WHERE path = ?",
                              (os.fsencode(path),)).fetchone()
        return None if row is None else Copy(row[0], row[1], bytes(row[2]))

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def open_kept(session: Session) -> Kept:
    """The session's kept copies, to read (close it)."""
    return Kept(_open(session, create=False))


@contextlib.contextmanager
def kept(session: Session) -> Iterator[Kept]:
    reader = open_kept(session)
    try:
        yield reader
    finally:
        reader.close()


def read(session: Session, lower_path: str) -> bytes | None:
    """The kept base content of `lower_path`, or None if none was kept."""
    with kept(session) as k:
        copy = k.get(lower_path)
    return None if copy is None else copy.body


def replace(session: Session, lower_path: str, body: bytes | None) -> None:
    """Make `body` the base content of `lower_path` (None: keep none)."""
    with _writing(session, create=body is not None) as db:
        if db is None:
            return
        key = os.fsencode(lower_path)
        if body is None or len(body) > LIMIT:
            db.execute("DELETE FROM kept WHERE path = ?", (key,))
        else:
            db.execute("INSERT OR REPLACE INTO kept VALUES (?, ?, NULL, ?)",
                       (key, len(body), body))


def forget(session: Session, paths: Iterable[str]) -> None:
    """Drop the kept content at and below each of `paths` (they left the
    session: landed, or discarded). Repeating it is harmless."""
    with _writing(session, create=False) as db:
        if db is None:
            return
        db.execute("BEGIN IMMEDIATE")
        for path in paths:
            if not path:
                db.execute("DELETE FROM kept")
                break
            key = os.fsencode(path)
            # At `key` and below it: "key/" <= path < "key0" ('0' follows '/').
            db.execute("DELETE FROM kept WHERE path = ? OR (path >= ? AND path < ?)",
                       (key, key + b"/", key + b"0"))
        db.execute("COMMIT")


def forget_all(session: Session) -> None:
    forget(session, [""])


def prune(session: Session, keep: Iterable[str]) -> None:
    """Drop every kept copy whose path is not in `keep` (the lower paths
    the session still changes), e.g. after a rollback dropped changes."""
    with _writing(session, create=False) as db:
        if db is None:
            return
        wanted = {os.fsencode(p) for p in keep}
        db.execute("BEGIN IMMEDIATE")
        gone = [(k,) for (k,) in db.execute("SELECT path FROM kept") if bytes(k) not in wanted]
        db.executemany("DELETE FROM kept WHERE path = ?", gone)
        db.execute("COMMIT")


@contextlib.contextmanager
def _writing(session: Session, *, create: bool) -> Iterator[sqlite3.Connection | None]:
    db = _open(session, create=create)
    try:
        yield db
    finally:
        if db is not None:
            db.close()


def _open(session: Session, *, create: bool) -> sqlite3.Connection | None:
    legacy = session.root / LEGACY_DIR
    has_legacy = legacy.is_dir()
    db = connect(session.root / DB_NAME, create=create or has_legacy)
    if db is not None and has_legacy:
        _migrate(db, legacy)
    return db


def _migrate(db: sqlite3.Connection, legacy: os.PathLike[str]) -> None:
    """Move the copies of the file-per-copy layout into the database (each
    file's size and mtime were the lower's), then remove the directory.
    They replace rows a daemon kept meanwhile: they are older (the first
    copy stands), and every review step migrates before it writes."""
    root = os.fspath(legacy)
    db.execute("BEGIN IMMEDIATE")
    for here, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(here, name)
            with contextlib.suppress(OSError):
                st = os.lstat(full)
                if st.st_size <= LIMIT:
                    with open(full, "rb") as f:
                        body = f.read(LIMIT + 1)
                    db.execute("INSERT OR REPLACE INTO kept VALUES (?, ?, ?, ?)",
                               (os.fsencode(os.path.relpath(full, root)), len(body),
                                st.st_mtime_ns, body))
    db.execute("COMMIT")
    shutil.rmtree(root, ignore_errors=True)
