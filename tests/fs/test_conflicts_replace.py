"""Issue 10 item 1: conflicts the session makes without a copy-up (an editor's
save by temp file + rename, `mv` over a file, `rm`, `rm -r`, an add where the
project added the same name) are seen through the session's base index, and
a commit then refuses before writing anything."""
# ruff: noqa: F811  (fixtures imported from s3_fixture are parameters here)

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fs.s3_fixture import ACCESS_KEY, S3Target, s3, s3_server  # noqa: F401
from tests.support.mounts import MountedSession, tree_state

Mount = Callable[..., MountedSession]


def _project(root: Path) -> Path:
    root.mkdir()
    (root / "README.md").write_text("hello\n")
    (root / "docs").mkdir()
    (root / "docs" / "x.md").write_text("x\n")
    (root / "docs" / "y.md").write_text("y\n")
    (root / "scripts").mkdir()
    (root / "scripts" / "run.sh").write_text("echo run\n")
    (root / "tree").mkdir()
    (root / "tree" / "keep.txt").write_text("keep\n")
    return root


def _user_edits(project: Path) -> None:
    (project / "README.md").write_text("hello from the user\n")
    (project / "docs" / "x.md").write_text("x edited by the user\n")
    with open(project / "scripts" / "run.sh", "a") as f:
        f.write("echo user\n")
    (project / "tree" / "user-added.txt").write_text("new\n")


def _diff_json(s: MountedSession) -> dict[str, dict[str, object]]:
    out = json.loads(s.cli("diff", s.name, "--json").stdout)
    return {c["path"]: c for c in out["changes"]} if isinstance(out, dict) else {
        c["path"]: c for c in out}


def test_editor_save_mv_over_rm_conflict_locally(tmp_path: Path, mount_session: Mount) -> None:
    project = _project(tmp_path / "project")
    s = mount_session(project)
    subprocess.run(["sed", "-i", "s/hello/hi/", str(s.mnt / "README.md")], check=True)
    os.rename(s.mnt / "docs" / "y.md", s.mnt / "docs" / "x.md")
    os.unlink(s.mnt / "scripts" / "run.sh")
    subprocess.run(["rm", "-r", str(s.mnt / "tree")], check=True)
    _user_edits(project)
    before = tree_state(project)
    changes = _diff_json(s)
    for path in ("README.md", "docs/x.md", "scripts/run.sh", "tree"):
        assert changes[path]["conflict"], (path, changes[path])
    base = changes["README.md"]["base"]  # (was null: the base index now says what it was)
    assert isinstance(base, dict) and base["from"] == "index" and base["kind"] == "file"
    porcelain = s.cli("diff", s.name).stdout
    assert "M! README.md" in porcelain
    done = s.cli("commit", s.name, check=False)
    assert done.returncode == 3, done.stderr
    assert tree_state(project) == before  # nothing of the user's work was touched
    as_json = s.cli("commit", s.name, "--json", check=False)
    assert as_json.returncode == 3
    listed = {c["path"] for c in json.loads(as_json.stdout)["conflicts"]}
    assert {"README.md", "docs/x.md", "scripts/run.sh", "tree"} <= listed


def test_no_conflict_without_project_edits_and_none_after_own_commit(
        tmp_path: Path, mount_session: Mount) -> None:
    project = _project(tmp_path / "project")
    s = mount_session(project)
    subprocess.run(["sed", "-i", "s/hello/hi/", str(s.mnt / "README.md")], check=True)
    os.unlink(s.mnt / "scripts" / "run.sh")
    s.cli("commit", s.name)
    assert (project / "README.md").read_text() == "hi\n"
    # the commit is the session's new base: editing again is no conflict
    subprocess.run(["sed", "-i", "s/hi/hey/", str(s.mnt / "README.md")], check=True)
    (s.mnt / "scripts" / "run.sh").write_text("again\n")
    assert not any(c["conflict"] for c in _diff_json(s).values())
    s.cli("commit", s.name)
    assert (project / "README.md").read_text() == "hey\n"


def test_mv_over_a_file_the_user_deleted_conflicts(tmp_path: Path, mount_session: Mount) -> None:
    """Found by the model test: `mv y.md x.md` in the session while the user
    deleted x.md showed as a plain rename (x.md is absent from the project
    now, so nothing was replaced) and the commit brought x.md back."""
    project = _project(tmp_path / "project")
    s = mount_session(project)
    os.rename(s.mnt / "docs" / "y.md", s.mnt / "docs" / "x.md")
    (project / "docs" / "x.md").unlink()
    change = _diff_json(s)["docs/x.md"]
    assert change["status"] == "R" and "deleted" in str(change["conflict"])
    assert s.cli("commit", s.name, check=False).returncode == 3
    assert not (project / "docs" / "x.md").exists() and (project / "docs" / "y.md").exists()
    # a rename to a name the project never had is no conflict
    os.rename(s.mnt / "scripts" / "run.sh", s.mnt / "scripts" / "start.sh")
    assert _diff_json(s)["scripts/start.sh"]["conflict"] is None


@pytest.mark.parametrize("then", ["deleted", "edited"])
def test_editor_save_over_a_file_the_user_added_conflicts_when_the_user_moves_on(
        tmp_path: Path, mount_session: Mount, then: str) -> None:
    """Found by the model test: the user adds a file after the session
    began, the session's editor saves over it (temp file + rename), then
    the user deletes it. The base index said absent when the session began
    and absent now, so the commit brought the file back without a conflict.
    What the session replaced (kept at the save: overlay/basecontent.py) is
    what its change was based on."""
    project = _project(tmp_path / "project")
    s = mount_session(project, None, "--lower-ttl", "0")
    (project / "docs" / "new.md").write_text("the user's note\n")
    tmp = s.mnt / "docs" / ".new.md.swp"
    tmp.write_text("the agent's note\n")
    os.rename(tmp, s.mnt / "docs" / "new.md")
    if then == "deleted":
        (project / "docs" / "new.md").unlink()
    else:
        (project / "docs" / "new.md").write_text("the user's second note\n")
    before = tree_state(project)
    change = _diff_json(s)["docs/new.md"]
    assert change["conflict"], change  # (edited: the index saw the add already)
    if then == "deleted":
        assert "deleted from the project since the session replaced it" in str(
            change["conflict"]), change
    assert s.cli("commit", s.name, check=False).returncode == 3
    assert tree_state(project) == before
    # resolve --ours: the session's note lands, knowingly
    s.cli("resolve", s.name, "--ours")
    s.cli("commit", s.name)
    assert (project / "docs" / "new.md").read_text() == "the agent's note\n"


def test_add_add_second_session_sees_the_first(tmp_path: Path, mount_session: Mount) -> None:
    project = _project(tmp_path / "project")
    a = mount_session(project)
    b = mount_session(project)
    (a.mnt / "new.txt").write_text("from a\n")
    (b.mnt / "new.txt").write_text("from b\n")
    a.cli("commit", a.name)
    added = _diff_json(b)["new.txt"]
    assert added["conflict"] and added["base"]["kind"] == "absent"  # type: ignore[index]
    assert b.cli("commit", b.name, check=False).returncode == 3
    assert (project / "new.txt").read_text() == "from a\n"


def test_editor_save_and_rm_conflict_on_s3(
        s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mount_session: Mount) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "astrid-review-secret")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    s3.put("data/edit.csv", b"a\n")
    s3.put("data/gone.csv", b"b\n")
    s3.put("data/calm.csv", b"c\n")
    lower = tmp_path / "project"
    (lower / "mnt").mkdir(parents=True)
    table = s3.mount_table(tmp_path)
    s = mount_session(lower, None, "--mounts", str(table))
    data = s.mnt / "mnt" / "s3" / "data"
    subprocess.run(["sed", "-i", "s/a/A/", str(data / "edit.csv")], check=True)
    (data / "gone.csv").unlink()
    (data / "calm.csv").unlink()
    (data / "both.csv").write_text("session\n")
    s3.put("data/edit.csv", b"a, by the user\n")
    s3.put("data/gone.csv", b"b, by the user\n")
    s3.put("data/both.csv", b"user\n")
    changes = _diff_json(s)
    for path in ("mnt/s3/data/edit.csv", "mnt/s3/data/gone.csv", "mnt/s3/data/both.csv"):
        assert changes[path]["conflict"], (path, changes[path])
    assert not changes["mnt/s3/data/calm.csv"]["conflict"]
    assert s.cli("commit", s.name, check=False).returncode == 3
    assert s3.get("data/edit.csv") == b"a, by the user\n"
    assert s3.get("data/gone.csv") == b"b, by the user\n"
    assert s3.get("data/both.csv") == b"user\n"
    s.cli("commit", s.name, "mnt/s3/data/calm.csv")
    assert "data/calm.csv" not in set(s3.keys())
