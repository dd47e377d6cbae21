"""Issue 10 items 4 and 5: a rollback across a commit never wedges the
session, and every destructive verb (rollback, discard, commit --force)
first takes an automatic snapshot, listed by `log`, that `undo` restores."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tests.support.mounts import MountedSession, tree_state

Mount = Callable[..., MountedSession]


def _project(root: Path) -> Path:
    (root / "old").mkdir(parents=True)
    (root / "old" / "a.txt").write_text("a\n")
    (root / "f.txt").write_text("f\n")
    (root / "r2.md").write_text("r2\n")
    return root


def test_rollback_across_a_commit_with_a_dir_rename_does_not_wedge(
        tmp_path: Path, mount_session: Mount) -> None:
    project = _project(tmp_path / "project")
    s = mount_session(project)
    os.rename(s.mnt / "old", s.mnt / "renamed")
    (s.mnt / "f.txt").write_text("edited\n")
    s.cli("snapshot", s.name, "--name", "s1")
    s.cli("commit", s.name)
    s.cli("rollback", s.name, "s1")
    # the rename is in the project already: nothing to land, nothing in conflict
    assert "!" not in s.cli("diff", s.name).stdout
    s.cli("commit", s.name, "--force")
    assert (project / "renamed" / "a.txt").read_text() == "a\n"
    assert (s.mnt / "renamed" / "a.txt").read_text() == "a\n"
    assert not [p for p in os.listdir(project) if p.startswith(".astrid-commit-")]
    assert not list((s.root / "journal").glob("commit-*.json"))
    s.cli("diff", s.name)  # every later command works
    assert tree_state(s.mnt) == tree_state(project)


def test_a_rename_whose_source_is_gone_is_refused_before_anything_is_written(
        tmp_path: Path, mount_session: Mount) -> None:
    project = _project(tmp_path / "project")
    s = mount_session(project)
    os.rename(s.mnt / "old", s.mnt / "renamed")
    (s.mnt / "f.txt").write_text("edited\n")
    (project / "old" / "a.txt").unlink()
    (project / "old").rmdir()  # the user removed the source meanwhile
    before = tree_state(project)
    done = s.cli("commit", s.name, "--force", check=False)
    assert done.returncode == 1 and "nothing was changed" in done.stderr, done.stderr
    assert tree_state(project) == before
    assert not list((s.root / "journal").glob("commit-*.json"))
    s.cli("commit", s.name, "f.txt")  # the session goes on working
    assert (project / "f.txt").read_text() == "edited\n"


def test_discard_with_an_unknown_path_discards_nothing(tmp_path: Path,
                                                      mount_session: Mount) -> None:
    s = mount_session(_project(tmp_path / "project"))
    (s.mnt / "r2.md").write_text("mine\n")
    done = s.cli("discard", s.name, "r2.md", "nonexist.txt", check=False)
    assert done.returncode == 2 and "nonexist.txt" in done.stderr
    assert (s.mnt / "r2.md").read_text() == "mine\n"
    assert json.loads(s.cli("log", s.name, "--json").stdout) == []


def _autos(s: MountedSession) -> list[str]:
    return [e["reason"] for e in json.loads(s.cli("log", s.name, "--json").stdout)
            if e["auto"]]


def test_discard_all_and_rollback_are_undone_in_one_command(
        tmp_path: Path, mount_session: Mount) -> None:
    s = mount_session(_project(tmp_path / "project"))
    (s.mnt / "r2.md").write_text("mine\n")
    (s.mnt / "new.txt").write_text("new\n")
    view = tree_state(s.mnt)
    s.cli("discard", s.name, "--all")
    assert not (s.mnt / "new.txt").exists()
    assert _autos(s) == ["before discard --all"]
    assert "(auto: before discard --all)" in s.cli("log", s.name).stdout
    s.cli("undo", s.name)
    assert tree_state(s.mnt) == view
    s.cli("snapshot", s.name, "--name", "early")
    (s.mnt / "later.txt").write_text("made after the snapshot\n")
    later = tree_state(s.mnt)
    s.cli("rollback", s.name, "early")
    assert not (s.mnt / "later.txt").exists()
    s.cli("undo", s.name)
    assert tree_state(s.mnt) == later
    s.cli("undo", s.name)  # undo twice: redo
    assert not (s.mnt / "later.txt").exists()


def test_commit_force_keeps_the_projects_overwritten_versions(
        tmp_path: Path, mount_session: Mount) -> None:
    project = _project(tmp_path / "project")
    s = mount_session(project)
    (s.mnt / "f.txt").write_text("session\n")
    (s.mnt / "r2.md").unlink()
    (project / "f.txt").write_text("user\n")
    (project / "r2.md").write_text("user r2\n")
    assert s.cli("commit", s.name, check=False).returncode == 3
    done = s.cli("commit", s.name, "--force")
    assert "overwritten versions are kept in" in done.stderr
    assert (project / "f.txt").read_text() == "session\n"
    assert not (project / "r2.md").exists()
    log = json.loads(s.cli("log", s.name, "--json").stdout)
    assert log[-1]["reason"] == "before commit --force over 2 conflict(s)"
    kept = s.root / "snapshots" / f"{log[-1]['number']:04d}" / "overwritten"
    assert (kept / "f.txt").read_text() == "user\n"
    assert (kept / "r2.md").read_text() == "user r2\n"
    # undo: the overwritten versions come back into the session; commit restores them
    s.cli("undo", s.name)
    assert (s.mnt / "f.txt").read_text() == "user\n"
    assert (s.mnt / "r2.md").read_text() == "user r2\n"
    s.cli("commit", s.name)
    assert (project / "f.txt").read_text() == "user\n"
    assert (project / "r2.md").read_text() == "user r2\n"


def test_undo_with_nothing_to_undo_is_a_usage_error(tmp_path: Path,
                                                    mount_session: Mount) -> None:
    s = mount_session(_project(tmp_path / "project"))
    done = s.cli("undo", s.name, check=False)
    assert done.returncode == 2 and "nothing to undo" in done.stderr
