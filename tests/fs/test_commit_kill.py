"""Issue 10 item 3: no client can take the mount down. A client that sends a
control request and goes away before the reply, and a commit killed at any
step, leave the mount alive and showing what it showed; the next command
finishes (or rolls back) the commit."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from astrid_fs.review.journal import CRASH_ENV, CRASH_EXIT
from tests.support.mounts import MountedSession, run_cli, tree_state

Mount = Callable[..., MountedSession]


def _alive(mnt: Path) -> bool:
    try:
        os.statvfs(mnt)  # never answered from a cache: reaches the daemon
    except OSError:
        return False
    return True


def test_a_client_that_leaves_before_the_reply_does_not_kill_the_mount(
        tmp_path: Path, mount_session: Mount) -> None:
    s = mount_session()
    (s.mnt / "a.txt").write_text("a\n")
    control = json.loads((s.root / "run" / "state.json").read_text())["control"]
    for op in ("sync", "invalidate"):
        for _ in range(3):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(control)
                sock.sendall(json.dumps({"op": op}).encode() + b"\n")
                sock.shutdown(socket.SHUT_RDWR)
    s.cli("status")  # one round trip more: the daemon answered every client so far
    assert _alive(s.mnt)
    assert (s.mnt / "a.txt").read_text() == "a\n"


def test_a_commit_killed_at_any_step_leaves_the_mount_alive(
        tmp_path: Path, mount_session: Mount) -> None:
    project = tmp_path / "project"
    (project / "d").mkdir(parents=True)
    (project / "d" / "f.txt").write_text("f\n")
    (project / "gone.txt").write_text("g\n")
    s = mount_session(project)
    step, finished = 1, False
    while not finished:
        # the same kind of commit each time: a crash rolled back or finished
        (s.mnt / f"new{step}.txt").write_text(f"{step}\n")
        (s.mnt / "d" / "f.txt").write_text(f"f {step}\n")
        if (s.mnt / f"new{step - 1}.txt").exists() and step > 1:
            (s.mnt / f"new{step - 1}.txt").unlink()
        view = tree_state(s.mnt)
        done = run_cli("commit", s.name, home=s.home, check=False, env={CRASH_ENV: str(step)})
        assert done.returncode in (0, CRASH_EXIT), done.stderr
        finished = done.returncode == 0
        assert _alive(s.mnt), f"mount gone after a commit killed at step {step}"
        s.cli("diff", s.name)  # finishes or rolls back what the crash left
        assert tree_state(s.mnt) == view, f"step {step}"
        step += 1
    assert step > 5
    s.cli("commit", s.name)
    assert tree_state(project) == tree_state(s.mnt)
