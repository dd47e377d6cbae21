"""Base content: what a project file held when the session first hid it.

A three-way merge of a conflict (review/resolve.py) needs the project's
version the session started from, but the lower layer only keeps the
newest one. So when the overlay first replaces a regular lower file of at
most `LIMIT` bytes (a copy-up, an `rm`, an editor's rename over it), it
keeps that file's content, with its size and mtime (they tell which version
of the lower it is), in the session's `SESSION/base-content.sqlite` (table
`kept`, keyed by the lower path as the review names it). The first copy
stands: a later hide of the same path (the session deleted, then re-created
it) keeps it. The review drops the copies of paths that land or are
discarded (review/basecontent.py).

One database per session, not a file per copy: a copy-up already creates
one inode (the upper copy), and a second one for its base cost 35-400 µs of
system time on this VM's ext4 (more the busier the disk), against 35-50 µs
for a row (measured 2026-12-02, docs/benchmarks.md). A row is one WAL append.

Knows: where the copies live and how to add one. Does not know: when a path
is hidden (copyup.py, namespace.py call `keep`) nor how merges use the copy.
Only session mounts keep base content: the work dir is `SESSION/work/astrid`
of a session that records a base (`bases.sqlite`); a plain
lower/upper/work mount keeps none. Keeping is best-effort: a copy that
cannot be written (disk full, the database locked for `_BUSY_S`) is not
kept, and the merge then takes an empty base (every difference becomes a
conflict region; nothing is lost).

Durability: WAL with synchronous=NORMAL, no fsync per row (as the upper
copies themselves, docs/design/overlay.md): a power loss can lose the rows
of the last moments, never tear one, so a kept copy is whole or absent.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Callable

LIMIT = 8 << 20  # larger files are not merged, so their base is not kept
DB_NAME = "base-content.sqlite"
LEGACY_DIR = "base-content"  # before 2026-12-02: a file per copy (review migrates it)
_INDEX_NAME = b"bases.sqlite"  # (review/bases.py)
_BUSY_S = 2.0  # the review holds the write lock for one statement at a time
_SCHEMA = ("CREATE TABLE IF NOT EXISTS kept (path BLOB PRIMARY KEY, size INTEGER NOT NULL, "
           "mtime_ns INTEGER, body BLOB NOT NULL)")

Body = Callable[[], bytes]  # the content to keep, read only when it is wanted


def connect(path: str | bytes | os.PathLike[str], *, create: bool) -> sqlite3.Connection | None:
    """An open base-content database (None: absent and not `create`)."""
    name = os.fsdecode(path)
    if not create and not os.path.exists(name):
        return None
    db = sqlite3.connect(name, timeout=_BUSY_S, isolation_level=None,
                         check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


class _Store:
    """The daemon's connection to one session's database. Copy-ups run on
    the FUSE thread and on worker threads (remote files): one lock."""

    def __init__(self, path: bytes, db: sqlite3.Connection, st: os.stat_result) -> None:
        self.path = path
        self.db = db
        self.file_id = (st.st_dev, st.st_ino)
        self.lock = threading.Lock()

    def has(self, key: bytes) -> bool:
        with self.lock:
            return self.db.execute("SELECT 1 FROM kept WHERE path = ?", (key,)).fetchone() \
                is not None

    def put(self, key: bytes, body: bytes, mtime_ns: int) -> None:
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO kept VALUES (?, ?, ?, ?)",
                            (key, len(body), mtime_ns, body))


_stores: dict[bytes, _Store] = {}
_stores_lock = threading.Lock()


def store_for(tmp_dir: bytes) -> _Store | None:
    """The base-content store of the session whose copy-up dir is `tmp_dir`
    (`SESSION/work/astrid`), if that session records a base; else None.
    Opened once; opened again if the database file was replaced (a test
    or a tool removed it: the old connection would write to nothing)."""
    paths = _session_paths(tmp_dir)
    if paths is None:
        return None
    index, db_path = paths
    with _stores_lock:
        known = _stores.get(tmp_dir)
        try:
            st = os.stat(db_path)
        except FileNotFoundError:
            st = None
        if known is not None and st is not None \
                and (st.st_dev, st.st_ino) == known.file_id:
            return known
        if known is not None:
            del _stores[tmp_dir]
            known.db.close()
        if not os.path.exists(index):
            return None
        db = connect(db_path, create=True)
        assert db is not None
        made = _Store(db_path, db, os.stat(db_path))
        _stores[tmp_dir] = made
        return made


def _session_paths(tmp_dir: bytes) -> tuple[bytes, bytes] | None:
    """(`SESSION/bases.sqlite`, `SESSION/base-content.sqlite`) if `tmp_dir`
    is named as a session's copy-up dir (path arithmetic only)."""
    work = os.path.dirname(tmp_dir)
    if os.path.basename(work) != b"work":
        return None
    root = os.path.dirname(work)
    return root + b"/" + _INDEX_NAME, root + b"/" + os.fsencode(DB_NAME)


def wanted(st: os.stat_result | None) -> bool:
    """Is a lower entry with this stat one whose content is kept?"""
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_size <= LIMIT


def keep(tmp_dir: bytes, lower_rel: bytes, body: Body, mtime_ns: int) -> None:
    """Keep the base content of lower path `lower_rel` (its lower file's
    `mtime_ns`) unless it is kept already; `body()` reads the content, and
    is not called when a copy stands (it may read a big file)."""
    _keep(tmp_dir, lower_rel, body, mtime_ns, look_first=True)


def keep_bytes(tmp_dir: bytes, lower_rel: bytes, content: bytes, mtime_ns: int) -> None:
    """`keep` with the content in hand (a copy-up read it): no look first,
    the insert leaves a copy kept already in place."""
    _keep(tmp_dir, lower_rel, lambda: content, mtime_ns, look_first=False)


def _keep(tmp_dir: bytes, lower_rel: bytes, body: Body, mtime_ns: int, *,
          look_first: bool) -> None:
    try:
        store = store_for(tmp_dir)
        if store is None or not lower_rel or (look_first and store.has(lower_rel)):
            return
        content = body()
        if len(content) <= LIMIT:
            store.put(lower_rel, content, mtime_ns)
    except (OSError, sqlite3.Error):
        pass  # best-effort (see the module docstring): no copy is a safe outcome


def copy_from(path: bytes) -> Body:
    """A `body` that reads the regular file at `path` (up to LIMIT bytes)."""
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read(LIMIT + 1)
    return read


def filled(fill: Callable[[int], None]) -> Body:
    """A `body` from a writer into an fd (a remote tree's `fetch_to`)."""
    def read() -> bytes:
        fd = os.memfd_create("astrid-base", os.MFD_CLOEXEC)
        try:
            fill(fd)
            with open(fd, "rb", closefd=False) as f:
                f.seek(0)
                return f.read(LIMIT + 1)
        finally:
            os.close(fd)
    return read


def keep_local(tmp_dir: bytes, lower_rel: bytes, lower_path: bytes) -> None:
    """Keep the base content of a local lower file about to be hidden."""
    try:
        st = os.lstat(lower_path)
    except OSError:
        return
    if wanted(st):
        keep(tmp_dir, lower_rel, copy_from(lower_path), st.st_mtime_ns)


def close_all() -> None:
    """Close every store this process opened (daemon exit, tests)."""
    with _stores_lock:
        for store in _stores.values():
            with contextlib.suppress(sqlite3.Error):
                store.db.close()
        _stores.clear()
