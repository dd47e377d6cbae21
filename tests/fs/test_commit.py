"""Commit: every change kind lands in the lower exactly as the mount showed
it; partial commits land only what was named (plus the structure it needs)
and leave the merged view unchanged; conflicts stop before any write."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from astrid_fs.errors import ConflictError, SessionError, UsageError
from astrid_fs.overlay.whiteout import Origin, make_whiteout, set_origin
from astrid_fs.review import diffview, journal
from astrid_fs.review.commit import commit, session_changes
from astrid_fs.review.journal import Steps
from astrid_fs.session import Session, create_or_open_session
from tests.fs.kernel_overlay import OverlayFactory, require_root
from tests.fs.scenario import build_lower, edit_through
from tests.fs.treecompare import assert_same_tree, tree_state


def _edited(session: Session, lower: Path, overlay: OverlayFactory) -> dict[str, object]:
    build_lower(lower)
    with overlay(session) as mnt:
        edit_through(mnt)
        return dict(tree_state(mnt, mtimes=True))


def test_full_commit_lands_every_change_kind(session: Session, lower: Path,
                                             overlay: OverlayFactory) -> None:
    want = _edited(session, lower, overlay)
    result = commit(session, [])
    assert len(result.changes) == 22
    assert_same_tree(tree_state(lower, mtimes=True), want)  # type: ignore[arg-type]
    assert os.listdir(session.upper) == []
    assert session_changes(session) == []
    assert os.listdir(session.journal_dir) in ([], [".lock"])
    with overlay(session) as mnt:
        assert_same_tree(tree_state(mnt, mtimes=True), want)  # type: ignore[arg-type]
    # hard links land as hard links
    assert os.stat(lower / "newdir/hard.txt").st_ino == os.stat(
        lower / "newdir/nested/f.txt").st_ino


def test_renamed_lower_dir_is_renamed_not_copied(session: Session, lower: Path,
                                                 overlay: OverlayFactory) -> None:
    _edited(session, lower, overlay)
    ino = os.stat(lower / "old" / "deep" / "y.txt").st_ino
    commit(session, ["renamed"])
    assert not (lower / "old").exists()
    assert os.stat(lower / "renamed" / "deep" / "y.txt").st_ino == ino


PARTS = ["src/main.py", "renamed/x.txt", "renamed", "docs", "opq/fresh", "opq/keep", "opq",
         "was_file", "was_file/child", "was_dir", "newdir/nested/f.txt", "newdir", "link",
         "chmod.sh", "xattr.txt", "touch.txt", "gone.txt", "src/moved.txt", "mv_me.txt"]


@pytest.mark.parametrize("part", PARTS)
def test_partial_commit_lands_only_that_part(part: str, session: Session, lower: Path,
                                             overlay: OverlayFactory) -> None:
    want = _edited(session, lower, overlay)
    before = {diffview.porcelain_line(c) for c in session_changes(session)}
    landed = {diffview.porcelain_line(c) for c in commit(session, [part]).changes}
    after = {diffview.porcelain_line(c) for c in session_changes(session)}
    assert landed and landed.isdisjoint(after)
    assert after == before - landed
    with overlay(session) as mnt:  # nothing lost, nothing stale
        assert_same_tree(tree_state(mnt, mtimes=True), want)  # type: ignore[arg-type]
    got = tree_state(lower, mtimes=True, only=[part])
    expected = {k: v for k, v in want.items() if k == part or k.startswith(part + "/")}
    if not part.startswith("opq/") and part != "newdir/nested/f.txt":
        assert_same_tree(got, expected)  # type: ignore[arg-type]
    else:
        assert {k: v for k, v in got.items() if k in expected} == expected


def test_conflict_stops_commit_before_anything_is_written(session: Session,
                                                          lower: Path) -> None:
    (lower / "a.txt").write_text("base\n")
    (lower / "b.txt").write_text("b\n")
    up = session.upper
    (up / "a.txt").write_text("session\n")
    set_origin(str(up / "a.txt"), session.xattrs,
               Origin.of_stat("a.txt", os.lstat(lower / "a.txt")))
    (up / "b.txt").write_text("b session\n")
    (lower / "a.txt").write_text("someone else\n")
    before = tree_state(lower)
    with pytest.raises(ConflictError, match=r"1 conflict.*a\.txt"):
        commit(session, [])
    assert tree_state(lower) == before
    assert (up / "b.txt").exists()
    commit(session, ["b.txt"])  # the unconflicted part may land alone
    assert (lower / "b.txt").read_text() == "b session\n"
    commit(session, [], force=True)
    assert (lower / "a.txt").read_text() == "session\n"


def test_dry_run_changes_nothing(session: Session, lower: Path,
                                 overlay: OverlayFactory) -> None:
    _edited(session, lower, overlay)
    lower_before, upper_before = tree_state(lower), tree_state(session.upper)
    result = commit(session, [], dry_run=True)
    assert result.dry_run and result.record is not None and len(result.changes) == 22
    assert tree_state(lower) == lower_before
    assert tree_state(session.upper) == upper_before


def test_unknown_path_is_refused(session: Session, lower: Path,
                                 overlay: OverlayFactory) -> None:
    _edited(session, lower, overlay)
    with pytest.raises(UsageError, match="no change at 'nope'"):
        commit(session, ["nope"])
    with pytest.raises(UsageError, match="outside the session"):
        commit(session, ["/etc/passwd"])
    with pytest.raises(UsageError, match="outside the session"):
        commit(session, ["../x"])


def test_committed_file_never_shares_an_inode_with_a_remaining_upper_name(
        session: Session, lower: Path) -> None:
    (session.upper / "a").write_text("shared\n")
    os.link(session.upper / "a", session.upper / "b")
    commit(session, ["a"])
    assert (lower / "a").read_text() == "shared\n"
    with open(session.upper / "b", "r+") as f:  # a later in-place write to the upper
        f.write("CHANGED")
    assert (lower / "a").read_text() == "shared\n"


def test_unmounted_same_fs_commit_moves_inodes_without_copying(session: Session,
                                                               lower: Path) -> None:
    (session.upper / "big").write_bytes(b"x" * 100_000)
    os.setxattr(session.upper / "big", "trusted.overlay.origin", b"kernel-handle")
    os.setxattr(session.upper / "big", "user.keep", b"me")
    ino = os.stat(session.upper / "big").st_ino
    commit(session, [])
    assert os.stat(lower / "big").st_ino == ino
    assert os.listxattr(lower / "big") == ["user.keep"]


def test_unmounted_same_fs_commit_of_one_hard_linked_name_copies(session: Session,
                                                                 lower: Path) -> None:
    """A same-fs commit moves an upper inode into the lower only when the
    upper gives it up entirely: committing one name of a hard-linked pair
    must copy, or the name left in the session would share the project's
    inode and every write through it would change the lower in place."""
    (session.upper / "a").write_text("shared\n")
    os.link(session.upper / "a", session.upper / "b")
    commit(session, ["a"])
    assert (lower / "a").read_text() == "shared\n"
    assert os.stat(lower / "a").st_ino != os.stat(session.upper / "b").st_ino
    (session.upper / "b").write_text("changed by the session\n")
    assert (lower / "a").read_text() == "shared\n"
    assert not (lower / "b").exists()
    commit(session, [])
    assert (lower / "b").read_text() == "changed by the session\n"
    assert (lower / "a").read_text() == "shared\n"


def test_filesystem_mounted_inside_the_lower(session: Session, lower: Path) -> None:
    require_root()
    inner = lower / "inner"
    inner.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(inner)], check=True)
    try:
        (inner / "f").write_text("old\n")
        (inner / "g").write_text("keep\n")
        (session.upper / "inner").mkdir()
        (session.upper / "inner" / "f").write_text("new\n")
        commit(session, [])  # lands by copy + fsync + rename on that filesystem
        assert (inner / "f").read_text() == "new\n"
        assert sorted(os.listdir(inner)) == ["f", "g"]
        (session.upper / "inner").mkdir(exist_ok=True)
        make_whiteout(str(session.upper / "inner" / "g"))
        with pytest.raises(SessionError, match="another filesystem"):
            commit(session, [])
        assert (inner / "g").read_text() == "keep\n"
        assert journal.pending(session) == []
    finally:
        subprocess.run(["umount", str(inner)], check=True)


def test_second_committer_is_told_the_session_is_busy(session: Session, lower: Path) -> None:
    (session.upper / "a").write_text("a\n")
    with journal.locked(session), pytest.raises(SessionError, match="busy"):
        commit(session, [])
    commit(session, [])
    assert (lower / "a").read_text() == "a\n"


@pytest.mark.parametrize("new_kind", ["dir", "file"])
@pytest.mark.parametrize("part", [None, "d1", "d3"])
def test_new_entry_at_a_renamed_dirs_old_path(new_kind: str, part: str | None,
                                              session: Session, lower: Path,
                                              overlay: OverlayFactory) -> None:
    """Found by the model test: rename d1 -> d3, then create d1 again."""
    (lower / "d1").mkdir()
    (lower / "d1" / "x").write_text("x")
    with overlay(session) as mnt:
        os.rename(mnt / "d1", mnt / "d3")
        if new_kind == "dir":
            (mnt / "d1").mkdir()
            (mnt / "d1" / "n").write_text("n")
        else:
            (mnt / "d1").write_text("now a file")
        want = tree_state(mnt, mtimes=True)
    landed = commit(session, [part] if part else []).changes
    # the new d1 needs the rename first; the rename alone can land
    assert {c.path for c in landed} >= ({"d3"} if part == "d3" else {"d1", "d3"})
    with overlay(session) as mnt:
        assert_same_tree(tree_state(mnt, mtimes=True), want)
    commit(session, [])
    assert_same_tree(tree_state(lower, mtimes=True), want)


def test_a_write_during_the_commit_is_kept_as_a_change(home: Path, lower: Path,
                                                       tmp_path: Path) -> None:
    """An agent writing through a mount while the commit runs: its newer
    version stays in the upper (the commit landed the version it staged)."""
    require_root()
    other_fs = tmp_path / "otherfs"  # upper on another fs: staging copies, as when mounted
    other_fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(other_fs)], check=True)
    try:
        session = create_or_open_session("w", lower, other_fs)
        (lower / "a.txt").write_text("lower\n")
        (session.upper / "a.txt").write_text("staged\n")

        def agent_writes(count: int, total: int) -> None:
            if count == 4:  # the entry is staged; the commit point is next
                (session.upper / "a.txt").write_text("newer, longer\n")

        commit(session, [], steps=Steps(on_step=agent_writes))
        assert (lower / "a.txt").read_text() == "staged\n"
        assert (session.upper / "a.txt").read_text() == "newer, longer\n"
        assert [c.path for c in session_changes(session)] == ["a.txt"]
    finally:
        subprocess.run(["umount", str(other_fs)], check=True)


def test_changes_under_a_mounted_source_never_land_in_the_project(
        session: Session, lower: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-source"
    other.mkdir()
    (session.root / "mounts.toml").write_text(
        f'[[mount]]\npath = "/mnt/other"\nsource = "{other}"\n')
    (session.upper / "mnt" / "other").mkdir(parents=True)
    (session.upper / "mnt" / "other" / "x.csv").write_text("remote edit\n")
    (session.upper / "local.txt").write_text("local\n")
    result = commit(session, [])
    assert sorted(c.path for c in result.changes) == ["local.txt", "mnt/other/x.csv"]
    assert (lower / "local.txt").read_text() == "local\n"
    assert not (lower / "mnt").exists()  # the dir holding the mount point stays virtual
    assert (other / "x.csv").read_text() == "remote edit\n"
