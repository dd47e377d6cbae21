"""Issue 10, conflicts without false alarms: after an editor-style save
(temp file + rename) in the session, a conflict is reported only where the
project's bytes really moved on from the base, or where the commit would
overwrite them; and where the session only re-saved what it read, `update`
takes the project's edit in without a marker."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.support.mounts import MountedSession

Mount = Callable[..., MountedSession]


def _conflicts(s: MountedSession) -> dict[str, str]:
    out = json.loads(s.cli("diff", s.name, "--json").stdout)
    changes = out["changes"] if isinstance(out, dict) else out
    return {c["path"]: c["conflict"] for c in changes if c["conflict"]}


def _rewrite_same_bytes(path: Path) -> None:
    """What `git checkout` or an editor's save of unchanged text does: a new
    inode with the same bytes, and another mtime."""
    body = path.read_bytes()
    st = path.stat()
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(body)
    os.chmod(tmp, st.st_mode & 0o7777)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    os.rename(tmp, path)


def _project(root: Path) -> Path:
    root.mkdir()
    for name in ("saved.txt", "appended.txt", "same-edit.txt", "edited.txt"):
        (root / name).write_text(f"{name}\nline 2\n")
    return root


def test_a_fingerprint_that_moved_over_the_same_bytes_is_no_conflict(
        tmp_path: Path, mount_session: Mount) -> None:
    project = _project(tmp_path / "project")
    s = mount_session(project)
    subprocess.run(["sed", "-i", "s/line 2/line 2 by the session/", str(s.mnt / "saved.txt")],
                   check=True)
    with open(s.mnt / "appended.txt", "a") as f:  # (a copy-up: judged by its origin)
        f.write("by the session\n")
    subprocess.run(["sed", "-i", "s/line 2/line 2 by the session/", str(s.mnt / "edited.txt")],
                   check=True)
    for name in ("saved.txt", "appended.txt"):
        _rewrite_same_bytes(project / name)
    (project / "edited.txt").write_text("edited.txt\nline 2 by the user\n")
    assert set(_conflicts(s)) == {"edited.txt"}  # only the real edit
    s.cli("commit", s.name, "saved.txt", "appended.txt")
    assert (project / "saved.txt").read_text() == "saved.txt\nline 2 by the session\n"
    assert (project / "appended.txt").read_text() == "appended.txt\nline 2\nby the session\n"
    assert s.cli("commit", s.name, check=False).returncode == 3
    assert (project / "edited.txt").read_text() == "edited.txt\nline 2 by the user\n"


def test_both_sides_saving_the_same_text_is_no_conflict(
        tmp_path: Path, mount_session: Mount) -> None:
    project = _project(tmp_path / "project")
    s = mount_session(project)
    subprocess.run(["sed", "-i", "s/line 2/line 2 fixed/", str(s.mnt / "same-edit.txt")],
                   check=True)
    (project / "same-edit.txt").write_text("same-edit.txt\nline 2 fixed\n")
    assert _conflicts(s) == {}
    s.cli("commit", s.name)
    assert (project / "same-edit.txt").read_text() == "same-edit.txt\nline 2 fixed\n"


def test_a_session_that_only_re_saved_takes_the_projects_edit_on_update(
        tmp_path: Path, mount_session: Mount) -> None:
    """The session re-saved saved.txt unchanged (a no-op `sed -i`) while the
    user edited it: committing the session's copy would undo the user's
    edit, so it is reported; `update` merges it to the user's version (the
    session's side equals the base) with no marker, and then nothing of the
    user's is lost by a commit."""
    project = _project(tmp_path / "project")
    s = mount_session(project)
    subprocess.run(["sed", "-i", "s/no such text/x/", str(s.mnt / "saved.txt")], check=True)
    assert _conflicts(s) == {}
    (project / "saved.txt").write_text("saved.txt\nline 2 by the user\n")
    assert set(_conflicts(s)) == {"saved.txt"}
    done = s.cli("update", s.name)
    assert done.stdout.split()[:2] == ["merged", "saved.txt"]
    assert (s.mnt / "saved.txt").read_text() == "saved.txt\nline 2 by the user\n"
    assert _conflicts(s) == {}
    s.cli("commit", s.name)
    assert (project / "saved.txt").read_text() == "saved.txt\nline 2 by the user\n"
