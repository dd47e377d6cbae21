"""The base-content database (overlay/basecontent.py, review/basecontent.py):
what the overlay keeps, the review reads, forgets at and below a path (not a
sibling that shares its prefix), prunes and replaces; a session of the
file-per-copy layout moved in on the first look; a database removed under
a running daemon opened again, not written into the void."""

from __future__ import annotations

import os
from pathlib import Path

from astrid_fs.overlay import basecontent as overlay_side
from astrid_fs.review import basecontent
from astrid_fs.review.basecontent import Copy
from astrid_fs.session import Session


def _session(tmp_path: Path) -> tuple[Session, bytes]:
    root = tmp_path / "s"
    (root / "work" / "astrid").mkdir(parents=True)
    (root / "bases.sqlite").write_bytes(b"")
    session = Session(name="s", root=root, lower=tmp_path / "lower", created="now",
                      xattr_ns="user")
    return session, os.fsencode(root / "work" / "astrid")


def test_kept_copies_are_read_forgotten_at_and_below_a_path_and_pruned(
        tmp_path: Path) -> None:
    session, work = _session(tmp_path)
    for path in ("d", "d/x", "d/e/y", "d0", "dd/x", "top"):
        overlay_side.keep_bytes(work, path.encode(), path.encode(), 7)
    overlay_side.keep_bytes(work, b"top", b"second", 8)  # the first copy stands
    assert basecontent.read(session, "top") == b"top"
    with basecontent.kept(session) as kept:
        assert kept.get("d/e/y") == Copy(5, 7, b"d/e/y")
    basecontent.forget(session, ["d"])
    left = {p for p in ("d", "d/x", "d/e/y", "d0", "dd/x", "top")
            if basecontent.read(session, p) is not None}
    assert left == {"d0", "dd/x", "top"}
    basecontent.prune(session, {"top", "gone"})
    assert [basecontent.read(session, p) for p in ("d0", "dd/x", "top")] == [None, None, b"top"]
    basecontent.replace(session, "top", b"resolved")
    with basecontent.kept(session) as kept:
        assert kept.get("top") == Copy(8, None, b"resolved")  # no lower mtime: never "same"
    basecontent.replace(session, "top", None)
    basecontent.forget_all(session)
    assert basecontent.read(session, "top") is None


def test_names_that_are_not_utf8_are_kept(tmp_path: Path) -> None:
    session, work = _session(tmp_path)
    raw = b"caf\xe9.txt"
    overlay_side.keep_bytes(work, raw, b"latin-1 name", 1)
    assert basecontent.read(session, os.fsdecode(raw)) == b"latin-1 name"
    basecontent.forget(session, [os.fsdecode(raw)])
    assert basecontent.read(session, os.fsdecode(raw)) is None


def test_a_file_per_copy_session_is_moved_into_the_database(tmp_path: Path) -> None:
    session, work = _session(tmp_path)
    legacy = session.root / "base-content"
    (legacy / "d").mkdir(parents=True)
    (legacy / "d" / "a").write_bytes(b"old layout\n")
    os.utime(legacy / "d" / "a", ns=(1, 3_000_000_000))
    overlay_side.keep_bytes(work, b"d/a", b"newer copy\n", 5)  # the first copy stands
    with basecontent.kept(session) as kept:
        assert kept.get("d/a") == Copy(11, 3_000_000_000, b"old layout\n")
    assert not legacy.exists()


def test_a_database_removed_under_the_daemon_is_opened_again(tmp_path: Path) -> None:
    session, work = _session(tmp_path)
    overlay_side.keep_bytes(work, b"a", b"one", 1)
    db = session.root / overlay_side.DB_NAME
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    overlay_side.keep_bytes(work, b"b", b"two", 2)
    assert basecontent.read(session, "a") is None
    assert basecontent.read(session, "b") == b"two"
    overlay_side.close_all()


def test_reading_a_session_that_kept_nothing_creates_nothing(tmp_path: Path) -> None:
    session, _work = _session(tmp_path)
    assert basecontent.read(session, "a") is None
    basecontent.forget(session, ["a"])
    basecontent.prune(session, set())
    assert not (session.root / overlay_side.DB_NAME).exists()
