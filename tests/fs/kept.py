"""Reading a session's kept base content (overlay/basecontent.py) in tests,
by the session dir alone."""

from __future__ import annotations

from pathlib import Path

from astrid_fs.overlay.basecontent import DB_NAME, connect
from astrid_fs.review.basecontent import Copy, Kept


def kept_copy(session_root: Path, path: str) -> Copy | None:
    reader = Kept(connect(session_root / DB_NAME, create=False))
    try:
        return reader.get(path)
    finally:
        reader.close()


def kept_text(session_root: Path, path: str) -> str | None:
    copy = kept_copy(session_root, path)
    return None if copy is None else copy.body.decode()


def lose(session_root: Path, path: str) -> None:
    """Drop one kept copy as a lost one would be (the merge then has no base)."""
    db = connect(session_root / DB_NAME, create=False)
    assert db is not None
    try:
        db.execute("DELETE FROM kept WHERE path = ?", (path.encode(),))
    finally:
        db.close()
