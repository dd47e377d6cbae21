"""Issue 10 item 2: one commit at a time per project, across processes. A
second session's commit waits for the first, then sees the first's changes
as conflicts instead of interleaving with it file by file."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.cli.daemonlink import DaemonLink
from astrid_fs.review.commit import commit
from astrid_fs.review.journal import Steps
from astrid_fs.review.projectlock import _plan, project_locked
from astrid_fs.session import open_session
from tests.support.mounts import ASTRID_FS, MountedSession

Mount = Callable[..., MountedSession]


def test_lock_plan_nests_paths_and_urls() -> None:
    assert _plan(["/p/sub", "s3://b/data"]) == [
        ("/", False), ("/p", False), ("/p/sub", True), ("s3://b", False),
        ("s3://b/data", True)]
    assert _plan(["/p", "/p/sub"]) == [("/", False), ("/p", True), ("/p/sub", True)]


class _Waited(Exception):
    pass


def _would_wait(project: str) -> None:
    raise _Waited(project)


def test_nested_projects_wait_for_each_other(tmp_path: Path) -> None:
    """(flock locks belong to open files: a second open in this process
    contends like another process would; `_would_wait` escapes the wait.)"""
    (tmp_path / "p" / "sub").mkdir(parents=True)
    (tmp_path / "q").mkdir()
    p, sub, q = (str(tmp_path / x) for x in ("p", "p/sub", "q"))
    with project_locked([p], tmp_path):
        with project_locked([q], tmp_path, _would_wait):
            pass  # a sibling project does not wait
        for nested in (sub, p):
            with pytest.raises(_Waited), project_locked([nested], tmp_path, _would_wait):
                pass
    with project_locked([sub], tmp_path), pytest.raises(_Waited), \
            project_locked([p], tmp_path, _would_wait):
        pass
    with project_locked([p], tmp_path, _would_wait):
        pass  # every lock was released


def test_second_commit_waits_then_sees_conflicts(tmp_path: Path, mount_session: Mount
                                                 ) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for i in range(20):
        (project / f"f{i}.txt").write_text(f"{i}\n")
    a, b = mount_session(project), mount_session(project)
    for i in range(20):
        (a.mnt / f"f{i}.txt").write_text(f"{i} by a\n")
        (b.mnt / f"f{i}.txt").write_text(f"{i} by b\n")
    (b.mnt / "only-b.txt").write_text("b\n")
    second: list[subprocess.Popen[str]] = []

    def start_b_mid_commit(count: int, total: int) -> None:
        if second:
            return
        proc = subprocess.Popen([*ASTRID_FS, "commit", b.name], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/",
                                env={**os.environ, "ASTRID_HOME": str(b.home)})
        second.append(proc)
        assert proc.stderr is not None
        line = proc.stderr.readline()  # returns once b is blocked on the lock
        assert "waiting for another commit" in line, line

    session = open_session(a.name)
    commit(session, [], steps=Steps(on_step=start_b_mid_commit), mount=DaemonLink(session))
    _out, err = second[0].communicate(timeout=120)
    assert second[0].returncode == 3, err
    assert "20 conflict(s)" in err
    assert sorted((project / f"f{i}.txt").read_text() for i in range(20)) == sorted(
        f"{i} by a\n" for i in range(20))
    assert not (project / "only-b.txt").exists()
