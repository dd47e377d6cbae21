"""Crash the commit at every journal step in turn (os._exit in a forked
child), then let the next command recover: no torn file, no lost change,
lower and upper consistent. The same with a disk-full error at every step."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from astrid_fs.cli.review import open_and_recover
from astrid_fs.errors import SessionError
from astrid_fs.review import journal
from astrid_fs.review.commit import commit, session_changes
from astrid_fs.review.entrycopy import copy_tree
from astrid_fs.review.journal import CRASH_EXIT, Steps
from astrid_fs.session import Session
from tests.fs.kernel_overlay import OverlayFactory
from tests.fs.scenario import build_lower, edit_through
from tests.fs.treecompare import Entry, assert_same_tree, tree_state


def _contents(root: Path) -> set[str]:
    found = set()
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as f:
                    found.add(hashlib.sha256(f.read()).hexdigest())
    return found


class Bench:
    """A session with one of every change, restorable to that state."""

    def __init__(self, session: Session, lower: Path, overlay: OverlayFactory,
                 tmp: Path) -> None:
        self.session, self.lower, self.overlay = session, lower, overlay
        build_lower(lower)
        self.orig = tree_state(lower)
        with overlay(session) as mnt:
            edit_through(mnt)
            self.want = tree_state(mnt)
        self.known = _contents(lower) | _contents(session.upper)
        self.saved = tmp / "saved"
        self.saved.mkdir()
        copy_tree(str(lower), str(self.saved / "lower"))
        copy_tree(str(session.root), str(self.saved / "session"))

    def restore(self) -> None:
        shutil.rmtree(self.lower)
        shutil.rmtree(self.session.root)
        copy_tree(str(self.saved / "lower"), str(self.lower))
        copy_tree(str(self.saved / "session"), str(self.session.root))

    def check_no_torn_file(self) -> None:
        for dirpath, _, files in os.walk(self.lower):
            for name in files:
                path = os.path.join(dirpath, name)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    with open(path, "rb") as f:
                        digest = hashlib.sha256(f.read()).hexdigest()
                    assert digest in self.known, f"torn or unknown file {path}"

    def check_consistent(self) -> dict[str, Entry]:
        """After recovery: the merged view is what the mount showed, the lower
        is all old or all new, nothing of the commit machinery is left."""
        assert journal.pending(self.session) == []
        with self.overlay(self.session) as mnt:
            assert_same_tree(tree_state(mnt), self.want)
        got = tree_state(self.lower)
        assert got in (self.orig, self.want), "lower is neither before nor after"
        return got


def _crash_at(session: Session, step: int) -> int:
    pid = os.fork()
    if pid == 0:  # child: commit until the injected crash, never return to pytest
        code = 1
        try:
            commit(session, [], steps=Steps(crash_at=step))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_crash_at_every_journal_step(session: Session, lower: Path,
                                     overlay: OverlayFactory, tmp_path: Path) -> None:
    bench = Bench(session, lower, overlay, tmp_path)
    outcomes = {"rolled back": 0, "finished": 0}
    step = 0
    while True:
        step += 1
        bench.restore()
        code = _crash_at(session, step)
        if code == 0:
            break
        assert code == CRASH_EXIT, f"step {step}: child failed with {code}"
        bench.check_no_torn_file()
        open_and_recover(session.name)
        got = bench.check_consistent()
        outcomes["finished" if got == bench.want else "rolled back"] += 1
        assert step < 500
    assert step > 50  # every stage, vacate, place, cleanup step was a crash point
    assert outcomes["rolled back"] > 10 and outcomes["finished"] > 30
    assert session_changes(session) == []


def test_disk_full_at_every_step_loses_nothing(session: Session, lower: Path,
                                               overlay: OverlayFactory,
                                               tmp_path: Path) -> None:
    bench = Bench(session, lower, overlay, tmp_path)
    step = 0
    while True:
        step += 1
        bench.restore()
        try:
            commit(session, [], steps=Steps(fail_at=step))
            break
        except SessionError as e:
            message = str(e)
        assert "No space left on device" in message
        assert ("nothing was changed" in message) or ("will be finished" in message)
        bench.check_no_torn_file()
        if "nothing was changed" in message:
            assert tree_state(lower) == bench.orig
            assert journal.pending(session) == []
        open_and_recover(session.name)
        bench.check_consistent()
    assert step > 50


def test_cli_crash_is_finished_by_next_command(session: Session, lower: Path,
                                               overlay: OverlayFactory, home: Path,
                                               tmp_path: Path) -> None:
    bench = Bench(session, lower, overlay, tmp_path)
    env = {**os.environ, "ASTRID_HOME": str(home), journal.CRASH_ENV: "40"}
    cli = [sys.executable, "-m", "astrid_fs.cli"]
    crashed = subprocess.run([*cli, "commit", session.name], env=env, capture_output=True,
                             text=True, check=False)
    assert crashed.returncode == CRASH_EXIT
    assert len(journal.pending(session)) == 1
    del env[journal.CRASH_ENV]
    nxt = subprocess.run([*cli, "diff", session.name], env=env, capture_output=True,
                         text=True, check=False)
    assert nxt.returncode == 0, nxt.stderr
    assert "finished interrupted commit" in nxt.stderr
    assert nxt.stdout == ""
    assert bench.check_consistent() == bench.want


@pytest.mark.parametrize("crash_step", [3])
def test_crash_before_commit_point_rolls_back(session: Session, lower: Path,
                                              overlay: OverlayFactory, tmp_path: Path,
                                              crash_step: int) -> None:
    bench = Bench(session, lower, overlay, tmp_path)
    assert _crash_at(session, crash_step) == CRASH_EXIT
    assert any(p.name.startswith(".astrid-commit-") for p in lower.iterdir())
    open_and_recover(session.name)
    assert bench.check_consistent() == bench.orig
    assert_same_tree(tree_state(lower), bench.orig)


def _recover_crashing_at(session: Session, step: int) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            journal.recover(session, Steps(crash_at=step))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_crash_during_recovery_is_recovered_too(session: Session, lower: Path,
                                                overlay: OverlayFactory,
                                                tmp_path: Path) -> None:
    bench = Bench(session, lower, overlay, tmp_path)
    tried = 0
    for first in range(30, 120, 9):  # crashes past the commit point
        for second in (1, 2, 5, 11, 23):
            bench.restore()
            if _crash_at(session, first) == 0:
                break
            if _recover_crashing_at(session, second) == 0:
                continue  # recovery finished before that step
            tried += 1
            bench.check_no_torn_file()
            open_and_recover(session.name)
            assert bench.check_consistent() == bench.want
    assert tried > 10
