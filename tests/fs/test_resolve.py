"""Issue 10, "Required": conflicts can be resolved per path (--ours keeps the
session's version, --theirs takes the project's, --merge merges text three-way
with git's markers), and `update` brings the project's changes into a session."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.fs.conftest import drop_kept, kept_base, kept_text
from tests.support.mounts import MountedSession

Mount = Callable[..., MountedSession]
LINES = "".join(f"line {i}\n" for i in range(1, 8))


def _conflicts(s: MountedSession) -> dict[str, str]:
    out = json.loads(s.cli("diff", s.name, "--json").stdout)
    changes = out["changes"] if isinstance(out, dict) else out
    return {c["path"]: c["conflict"] for c in changes if c["conflict"]}


def _setup(tmp_path: Path, mount_session: Mount) -> tuple[MountedSession, Path]:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "untouched.txt"):
        (project / name).write_text(LINES)
    s = mount_session(project)
    for name in ("a.txt", "b.txt", "c.txt"):
        subprocess.run(["sed", "-i", "s/line 1$/line 1 by the session/",
                        str(s.mnt / name)], check=True)
        (project / name).write_text(LINES.replace("line 7\n", "line 7 by the user\n"))
    return s, project


def test_ours_and_theirs_per_path(tmp_path: Path, mount_session: Mount) -> None:
    s, project = _setup(tmp_path, mount_session)
    assert set(_conflicts(s)) == {"a.txt", "b.txt", "c.txt"}
    bad = s.cli("resolve", s.name, "a.txt", "untouched.txt", "--ours", check=False)
    assert bad.returncode == 2 and "untouched.txt" in bad.stderr
    assert set(_conflicts(s)) == {"a.txt", "b.txt", "c.txt"}  # nothing was resolved
    s.cli("resolve", s.name, "a.txt", "--ours")
    s.cli("resolve", s.name, "b.txt", "--theirs")
    assert set(_conflicts(s)) == {"c.txt"}
    assert (s.mnt / "b.txt").read_text() == (project / "b.txt").read_text()
    s.cli("commit", s.name, "a.txt")
    assert (project / "a.txt").read_text().startswith("line 1 by the session\n")
    assert (project / "a.txt").read_text().endswith("line 7\n")  # ours: the user's lost, knowingly
    reasons = [e["reason"] for e in json.loads(s.cli("log", s.name, "--json").stdout)]
    assert "before resolve --theirs b.txt" in reasons


def test_merge_with_a_kept_base_is_clean(tmp_path: Path, mount_session: Mount) -> None:
    s, project = _setup(tmp_path, mount_session)
    # the overlay kept the project's version the session's `sed -i` replaced
    assert kept_text(s.root, "a.txt") == LINES
    done = s.cli("resolve", s.name, "a.txt", "--merge")
    assert done.stdout.startswith("merged")
    merged = LINES.replace("line 1\n", "line 1 by the session\n").replace(
        "line 7\n", "line 7 by the user\n")
    assert (s.mnt / "a.txt").read_text() == merged
    assert "a.txt" not in _conflicts(s)
    s.cli("commit", s.name, "a.txt")
    assert (project / "a.txt").read_text() == merged


def test_merge_without_a_base_writes_markers_and_stays_in_conflict(
        tmp_path: Path, mount_session: Mount) -> None:
    s, project = _setup(tmp_path, mount_session)
    drop_kept(s.root, "c.txt")  # (lost: the merge falls back to no base)
    done = s.cli("resolve", s.name, "c.txt", "--merge", check=False)
    assert done.returncode == 3 and done.stdout.startswith("markers")
    body = (s.mnt / "c.txt").read_text()
    assert "<<<<<<< session\n" in body and "=======\n" in body and ">>>>>>> project\n" in body
    assert "markers" in _conflicts(s)["c.txt"]
    assert s.cli("commit", s.name, "c.txt", check=False).returncode == 3
    (s.mnt / "c.txt").write_text("settled by hand\n")  # the markers are gone
    assert "c.txt" not in _conflicts(s)
    s.cli("commit", s.name, "c.txt")
    assert (project / "c.txt").read_text() == "settled by hand\n"


def test_update_takes_the_projects_changes_in(tmp_path: Path, mount_session: Mount) -> None:
    s, project = _setup(tmp_path, mount_session)
    drop_kept(s.root, "c.txt")  # only c.txt has no kept base
    (project / "untouched.txt").write_text("changed by the user before the session saw it\n")
    done = s.cli("update", s.name, check=False)
    assert done.returncode == 3  # c.txt has no kept base: markers
    results = {line.split()[1].rstrip(":"): line.split()[0] for line in done.stdout.splitlines()}
    assert results == {"a.txt": "merged", "b.txt": "merged", "c.txt": "markers"}
    # after update, the session's edit of a file the user changed earlier is no conflict
    subprocess.run(["sed", "-i", "s/user/agent/", str(s.mnt / "untouched.txt")], check=True)
    assert set(_conflicts(s)) == {"c.txt"}
    assert s.cli("update", s.name, "--json", check=False).returncode == 3


def test_the_overlay_keeps_what_it_hides_until_the_path_leaves(
        tmp_path: Path, mount_session: Mount) -> None:
    """Gap: the base of a merge. Every way the session hides a regular
    project file (copy-up, editor save, `mv` over, `rm`) keeps the project's
    version once; a file over 8 MiB is not kept; commit, discard and rm of
    the session drop the copies."""
    project = tmp_path / "project"
    (project / "d").mkdir(parents=True)
    names = ("append.txt", "saved.txt", "over.txt", "gone.txt", "d/moved.txt", "d/src.txt")
    for name in names:
        (project / name).write_text(f"{name} v0\n")
    (project / "big.bin").write_bytes(b"x" * ((8 << 20) + 1))
    s = mount_session(project)
    with open(s.mnt / "append.txt", "a") as f:
        f.write("by the session\n")
    subprocess.run(["sed", "-i", "s/v0/v1/", str(s.mnt / "saved.txt")], check=True)
    (s.mnt / "d" / "src.txt").rename(s.mnt / "over.txt")
    (s.mnt / "gone.txt").unlink()
    (s.mnt / "d" / "moved.txt").rename(s.mnt / "d" / "renamed.txt")
    with open(s.mnt / "big.bin", "ab") as f:
        f.write(b"y")
    for name in names:
        assert kept_text(s.root, name) == f"{name} v0\n", name
    assert kept_base(s.root, "big.bin") is None
    # once kept, a path's base stands: the project's later versions are not it
    (project / "append.txt").write_text("append.txt v9\n")
    (s.mnt / "append.txt").unlink()
    assert kept_text(s.root, "append.txt") == "append.txt v0\n"
    s.cli("discard", s.name, "gone.txt", "append.txt")
    assert kept_base(s.root, "gone.txt") is None and kept_base(s.root, "append.txt") is None
    s.cli("commit", s.name, "saved.txt", "over.txt", "d/src.txt")
    assert kept_base(s.root, "saved.txt") is None and kept_base(s.root, "over.txt") is None
    assert kept_base(s.root, "d/src.txt") is None
    assert kept_base(s.root, "d/moved.txt") is not None  # still a change of the session
    s.umount()
    s.cli("rm", s.name, "--force")
    assert not s.root.exists()
