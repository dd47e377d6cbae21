"""The review verbs as a user runs them: output formats, exit codes, and
bad input (unknown session, path outside, lower gone or read-only, disk
full) answered with one line, a non-zero exit, and nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from astrid_fs.overlay.whiteout import Origin, set_origin
from astrid_fs.review import journal
from astrid_fs.session import Session, create_or_open_session
from tests.fs.kernel_overlay import OverlayFactory, require_root
from tests.fs.scenario import build_lower, edit_through
from tests.fs.treecompare import assert_same_tree, tree_state

CLI = [sys.executable, "-m", "astrid_fs.cli"]


def run(home: Path, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "ASTRID_HOME": str(home), **(env or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=full,
                          check=False, timeout=120)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("astrid-fs: "), result.stderr
    assert text in lines[0], lines[0]


@pytest.fixture
def edited(session: Session, lower: Path, overlay: OverlayFactory) -> Session:
    build_lower(lower)
    with overlay(session) as mnt:
        edit_through(mnt)
    return session


def test_diff_formats(edited: Session, home: Path) -> None:
    plain = run(home, "diff", "s1")
    assert plain.returncode == 0 and "R  old -> renamed/\n" in plain.stdout
    assert len(plain.stdout.splitlines()) == 22
    only = run(home, "diff", "s1", "src")
    assert only.stdout.splitlines() == ["M  src/main.py", "A  src/moved.txt", "A  src/new.py"]
    patch = run(home, "diff", "s1", "--patch")
    assert "Binary files a/bin.dat and b/bin.dat differ" in patch.stdout
    stat = run(home, "diff", "s1", "--stat")
    assert "22 changes" in stat.stdout
    items = json.loads(run(home, "diff", "s1", "--json").stdout)
    assert len(items) == 22 and {"path", "status", "flags", "conflict"} <= set(items[0])


def test_commit_dry_run_then_partial_then_all(edited: Session, home: Path,
                                              lower: Path) -> None:
    before = tree_state(lower)
    dry = run(home, "commit", "s1", "--dry-run")
    assert dry.returncode == 0 and "rename old -> renamed" in dry.stdout
    assert "dry run: 22 change(s)" in dry.stdout
    assert tree_state(lower) == before
    part = run(home, "commit", "s1", "src/main.py")
    assert part.returncode == 0 and "committed 1 change(s)" in part.stdout
    assert (lower / "src/main.py").read_text() == "print('hello, world')\n"
    rest = run(home, "commit", "s1", "--json")
    assert len(json.loads(rest.stdout)["committed"]) == 21
    assert run(home, "commit", "s1").stdout == "nothing to commit\n"


def test_unknown_session_and_paths_outside(edited: Session, home: Path) -> None:
    # an unknown session is bad usage, as an unknown path or snapshot is (issue 10 item 8)
    one_line_error(run(home, "diff", "nope"), 2, "no session named 'nope'")
    one_line_error(run(home, "commit", "nope"), 2, "no session named 'nope'")
    one_line_error(run(home, "commit", "s1", "/etc/passwd"), 2, "outside the session")
    one_line_error(run(home, "commit", "s1", "../../etc"), 2, "outside the session")
    one_line_error(run(home, "discard", "s1", "/etc"), 2, "outside the session")
    one_line_error(run(home, "commit", "s1", "no/such/change"), 2, "no change at")
    one_line_error(run(home, "discard", "s1"), 2, "--all")
    one_line_error(run(home, "rollback", "s1", "7"), 2, "has no snapshot '7'")


def test_conflict_exit_code(session: Session, lower: Path, home: Path) -> None:
    (lower / "a.txt").write_text("base\n")
    (session.upper / "a.txt").write_text("mine\n")
    set_origin(str(session.upper / "a.txt"), session.xattrs,
               Origin.of_stat("a.txt", os.lstat(lower / "a.txt")))
    (lower / "a.txt").write_text("theirs\n")
    assert run(home, "diff", "s1").stdout.startswith("M! a.txt\n")
    one_line_error(run(home, "commit", "s1"), 3, "conflict")
    assert (lower / "a.txt").read_text() == "theirs\n"
    assert run(home, "commit", "s1", "--force").returncode == 0
    assert (lower / "a.txt").read_text() == "mine\n"


def test_lower_vanished(edited: Session, home: Path, lower: Path, tmp_path: Path) -> None:
    upper_before = tree_state(edited.upper)
    lower.rename(tmp_path / "elsewhere")
    one_line_error(run(home, "commit", "s1"), 1, "vanished")
    one_line_error(run(home, "diff", "s1"), 1, "vanished")
    assert tree_state(edited.upper) == upper_before
    assert journal.pending(edited) == []


@contextmanager
def read_only_bind(path: Path) -> Iterator[Path]:
    """Make `path` read-only for a while with a read-only bind mount on itself."""
    require_root()
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_lower_read_only(edited: Session, home: Path, lower: Path) -> None:
    lower_before, upper_before = tree_state(lower), tree_state(edited.upper)
    with read_only_bind(lower):
        one_line_error(run(home, "commit", "s1"), 1, "not writable")
        assert tree_state(lower) == lower_before
    assert tree_state(edited.upper) == upper_before
    assert journal.pending(edited) == []
    assert run(home, "commit", "s1").returncode == 0  # writable again: lands


def test_disk_full_on_a_small_tmpfs(home: Path, tmp_path: Path) -> None:
    require_root()
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        (small / "keep.txt").write_text("keep\n")
        session = create_or_open_session("tiny", small, home)
        (session.upper / "keep.txt").write_text("changed\n")
        (session.upper / "big.bin").write_bytes(os.urandom(3 << 20))
        one_line_error(run(home, "commit", "tiny"), 1, "No space left on device")
        assert (small / "keep.txt").read_text() == "keep\n"
        assert sorted(os.listdir(small)) == ["keep.txt"]  # no staging left behind
        assert journal.pending(session) == []
        assert (session.upper / "big.bin").stat().st_size == 3 << 20
        (session.upper / "big.bin").unlink()
        assert run(home, "commit", "tiny").returncode == 0
        assert (small / "keep.txt").read_text() == "changed\n"
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_failure_after_commit_point_leaves_journal_for_next_run(
        edited: Session, home: Path, lower: Path, overlay: OverlayFactory) -> None:
    with overlay(edited) as mnt:
        want = tree_state(mnt)
    failed = run(home, "commit", "s1", env={journal.FAIL_ENV: "35"})
    one_line_error(failed, 1, "will be finished by the next astrid-fs command")
    assert len(journal.pending(edited)) == 1
    nxt = run(home, "diff", "s1")
    assert nxt.returncode == 0 and "finished interrupted commit" in nxt.stderr
    assert_same_tree(tree_state(lower), want)


def test_discard_parts_and_all(edited: Session, home: Path, lower: Path,
                               overlay: OverlayFactory) -> None:
    lower_before = tree_state(lower)
    assert run(home, "discard", "s1", "renamed", "src/main.py", "opq/keep").returncode == 0
    lines = run(home, "diff", "s1").stdout.splitlines()
    assert not any("renamed" in line or "main.py" in line or "opq/keep" in line
                   for line in lines)
    assert "A  opq/fresh" in lines and "D  gone.txt" in lines
    with overlay(edited) as mnt:
        assert (mnt / "old" / "x.txt").read_text() == "x\n"
        assert (mnt / "opq" / "keep").read_text() == "hidden soon\n"
        assert (mnt / "src" / "main.py").read_text() == "print('hello')\n"
    assert run(home, "discard", "s1", "--all").returncode == 0
    assert run(home, "diff", "s1").stdout == ""
    assert tree_state(lower) == lower_before


def test_astrid_fs_entry_point_runs_review_verbs(edited: Session, home: Path) -> None:
    """`astrid-fs VERB SESSION` must reach the review verbs (two positional
    arguments must not be taken for mount.fuse3's `SOURCE MOUNTPOINT` form)."""
    env = {**os.environ, "ASTRID_HOME": str(home)}
    for args in (["diff", "s1"], ["log", "s1"], ["snapshot", "s1"], ["commit", "s1"]):
        result = subprocess.run([sys.executable, "-m", "astrid_fs.cli", *args], env=env,
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"astrid-fs {' '.join(args)}: {result.stderr}"


def test_diff_works_while_another_command_holds_the_session(edited: Session,
                                                            home: Path) -> None:
    with journal.locked(edited):
        assert run(home, "diff", "s1").returncode == 0
        one_line_error(run(home, "commit", "s1"), 1, "busy")


def test_snapshot_log_rollback(edited: Session, home: Path) -> None:
    first = run(home, "snapshot", "s1", "--name", "start")
    assert first.returncode == 0 and first.stdout.startswith("snapshot 1 (start): 22 change(s)")
    assert run(home, "discard", "s1", "src").returncode == 0  # snapshot 2: automatic
    assert run(home, "snapshot", "s1").stdout.startswith("snapshot 3: 19 change(s)")
    log = run(home, "log", "s1").stdout.splitlines()
    assert len(log) == 3 and log[0].split()[0] == "1" and log[0].endswith("start")
    assert log[1].endswith("(auto: before discard src)")
    assert [s["changes"] for s in json.loads(run(home, "log", "s1", "--json").stdout)] == [
        22, 22, 19]
    one_line_error(run(home, "snapshot", "s1", "--name", "start"), 2, "already has")
    assert run(home, "rollback", "s1", "start").returncode == 0
    assert len(run(home, "diff", "s1").stdout.splitlines()) == 22


def test_recovery_blocked_by_a_read_only_lower_waits_for_it(
        edited: Session, home: Path, lower: Path, overlay: OverlayFactory) -> None:
    with overlay(edited) as mnt:
        want = tree_state(mnt)
    failed = run(home, "commit", "s1", env={journal.FAIL_ENV: "35"})
    assert failed.returncode == 1 and len(journal.pending(edited)) == 1
    with read_only_bind(lower):
        one_line_error(run(home, "diff", "s1"), 1, "cannot finish interrupted commit")
        assert len(journal.pending(edited)) == 1
    nxt = run(home, "diff", "s1")
    assert nxt.returncode == 0 and "finished interrupted commit" in nxt.stderr
    assert_same_tree(tree_state(lower), want)
