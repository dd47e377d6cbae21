"""Review verbs on a session mounted with astrid-fs itself: edits made
through the FUSE mount (which records origin fingerprints), then commit,
discard and rollback while mounted; the mount stays coherent."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.cli.daemonlink import DaemonLink
from astrid_fs.errors import ConflictError
from astrid_fs.review import diffview
from astrid_fs.review.commit import commit, session_changes
from astrid_fs.review.discard import discard
from astrid_fs.review.snapshot import rollback, snapshot
from astrid_fs.session import Session, open_session
from tests.fs.scenario import build_lower, edit_through
from tests.fs.treecompare import assert_same_tree, tree_state
from tests.support.mounts import MountedSession

MountFactory = Callable[..., MountedSession]


def _mounted(mount_session: MountFactory, tmp_path: Path) -> tuple[MountedSession, Session]:
    lower = tmp_path / "project"
    lower.mkdir()
    build_lower(lower)
    mounted = mount_session(lower)
    return mounted, open_session(mounted.name)


def test_commit_while_mounted(mount_session: MountFactory, tmp_path: Path) -> None:
    mounted, session = _mounted(mount_session, tmp_path)
    mnt = mounted.mnt
    edit_through(mnt)
    want = tree_state(mnt, mtimes=True)
    lines = set(diffview.porcelain(session_changes(session, DaemonLink(session))).splitlines())
    assert "R  mv_me.txt -> src/moved.txt" in lines  # origin turns add+delete into a rename
    assert "R  old -> renamed/" in lines
    commit(session, ["src", "renamed"], mount=DaemonLink(session))
    assert_same_tree(tree_state(mnt, mtimes=True), want)
    commit(session, [], mount=DaemonLink(session))
    assert_same_tree(tree_state(session.lower, mtimes=True), want)
    assert_same_tree(tree_state(mnt, mtimes=True), want)
    assert session_changes(session, DaemonLink(session)) == []
    # the agent goes on working over the new lower
    (mnt / "renamed" / "x.txt").write_text("after commit\n")
    assert [diffview.porcelain_line(c) for c in session_changes(session, DaemonLink(session))] == [
        "M  renamed/x.txt"]
    assert (session.lower / "renamed" / "x.txt").read_text() == "x changed\n"
    commit(session, [], mount=DaemonLink(session))
    assert (mnt / "renamed" / "x.txt").read_text() == "after commit\n"


def test_conflict_seen_through_origin(mount_session: MountFactory, tmp_path: Path) -> None:
    mounted, session = _mounted(mount_session, tmp_path)
    with open(mounted.mnt / "src" / "util.py", "a") as f:
        f.write("# agent\n")
    (session.lower / "src" / "util.py").write_text("def f():\n    return 2\n")
    changes = session_changes(session, DaemonLink(session))
    assert [diffview.porcelain_line(c) for c in changes] == ["M! src/util.py"]
    with pytest.raises(ConflictError):
        commit(session, [], mount=DaemonLink(session))
    assert (session.lower / "src" / "util.py").read_text() == "def f():\n    return 2\n"


def test_discard_and_rollback_while_mounted(mount_session: MountFactory,
                                            tmp_path: Path) -> None:
    mounted, session = _mounted(mount_session, tmp_path)
    mnt = mounted.mnt
    (mnt / "src" / "main.py").write_text("v1\n")
    snapshot(session, "v1", mount=DaemonLink(session))
    (mnt / "src" / "main.py").write_text("v2 longer\n")
    os.unlink(mnt / "gone.txt")
    (mnt / "extra.txt").write_text("extra\n")
    rollback(session, "v1", mount=DaemonLink(session))
    assert (mnt / "src" / "main.py").read_text() == "v1\n"
    assert (mnt / "gone.txt").read_text() == "delete me\n"
    assert not (mnt / "extra.txt").exists()
    discard(session, ["src/main.py"], mount=DaemonLink(session))
    assert (mnt / "src" / "main.py").read_text() == "print('hello')\n"
    assert session_changes(session, DaemonLink(session)) == []


def test_discard_all_clears_directories_left_without_a_change(
        mount_session: MountFactory, tmp_path: Path) -> None:
    """`git status` creates `.git/index.lock` and removes it again: `.git`
    and its parent stay copied up, empty of changes, and were served as
    merged directories (their lookups in Python) for the rest of the
    session, `discard --all` notwithstanding (it found no change and left
    them). Now it removes them and the mount serves them as the project's."""
    mounted, session = _mounted(mount_session, tmp_path)
    mnt = mounted.mnt
    want = tree_state(mnt)
    lock = mnt / "src" / "index.lock"
    lock.write_text("x")
    os.unlink(lock)
    assert os.listdir(session.upper) == ["src"]
    assert session_changes(session, DaemonLink(session)) == []

    # (an entry found: the shim answers those only where the lower layer
    # alone shows the directory; a miss it answers in a merged one too)
    name = next(p.name for p in sorted((session.lower / "src").iterdir())
                if p.is_file() and p.stat().st_nlink == 1)

    def shim_entries_for_a_fresh_lookup() -> int:
        mounted.control("invalidate")  # the kernel forgets its entries
        before = int(mounted.control("stats")["shim_lookups"]["entries"])
        os.stat(mnt / "src" / name)
        return int(mounted.control("stats")["shim_lookups"]["entries"]) - before

    assert shim_entries_for_a_fresh_lookup() == 0  # a merged directory: Python's
    discard(session, [], mount=DaemonLink(session))
    assert os.listdir(session.upper) == []
    assert_same_tree(tree_state(mnt), want)
    # served as the project's again: its entries are the shim's
    assert shim_entries_for_a_fresh_lookup() >= 1


def test_pure_file_rename_is_a_rename_in_the_lower(mount_session: MountFactory,
                                                   tmp_path: Path) -> None:
    mounted, session = _mounted(mount_session, tmp_path)
    ino = os.stat(session.lower / "mv_me.txt").st_ino
    os.rename(mounted.mnt / "mv_me.txt", mounted.mnt / "docs" / "moved.txt")
    os.rename(mounted.mnt / "gone.txt", mounted.mnt / "docs" / "edited.txt")
    with open(mounted.mnt / "docs" / "edited.txt", "a") as f:
        f.write("more\n")
    lines = [diffview.porcelain_line(c) for c in session_changes(session, DaemonLink(session))]
    assert lines == ["R  gone.txt -> docs/edited.txt", "R  mv_me.txt -> docs/moved.txt"]
    want = tree_state(mounted.mnt, mtimes=True)
    commit(session, [], mount=DaemonLink(session))
    assert os.stat(session.lower / "docs" / "moved.txt").st_ino == ino
    assert (session.lower / "docs" / "edited.txt").read_text() == "delete me\nmore\n"
    assert_same_tree(tree_state(session.lower, mtimes=True), want)
    assert_same_tree(tree_state(mounted.mnt, mtimes=True), want)
