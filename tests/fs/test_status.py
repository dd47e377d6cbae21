"""Issue 10 items 3 (CLI side) and 6: `status` tells the truth (a killed
daemon is not "mounted", changes are counted as `diff` lists them, under a
mounted source too, an interrupted commit is named), and a commit that
landed is reported as landed even when the mount cannot be told."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

from astrid_fs.errors import MountError
from astrid_fs.overlay.whiteout import make_whiteout
from astrid_fs.review.commit import commit
from astrid_fs.review.journal import CRASH_ENV, CRASH_EXIT
from astrid_fs.review.mountlink import Unmounted
from astrid_fs.session import Session
from tests.support.mounts import MountedSession, loop_ext4, run_cli

Mount = Callable[..., MountedSession]


def _row(home: Path) -> dict[str, object]:
    (row,) = json.loads(run_cli("status", "--json", home=home).stdout)["sessions"]
    assert isinstance(row, dict)
    return row


def test_killed_daemon_is_not_shown_as_mounted(mount_session: Mount) -> None:
    s = mount_session()
    pid = _row(s.home)["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    while os.path.exists(f"/proc/{pid}") and not _zombie(pid):
        os.sched_yield()  # (not our child: wait for the kernel to reap or mark it)
    row = _row(s.home)
    assert not row["mounted"] and row["stale_mount"] and row["pid"] is None
    assert "DEAD mount at" in run_cli("status", home=s.home).stdout
    s.cli("umount", s.name)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def test_status_counts_what_diff_lists_under_a_mounted_source(
        session: Session, home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for i in range(5):
        (other / f"k{i}.csv").write_text(f"{i}\n")
    (session.root / "mounts.toml").write_text(
        f'[[mount]]\npath = "/mnt/other"\nsource = "{other}"\n')
    up = session.upper / "mnt" / "other"
    up.mkdir(parents=True)
    for i in range(5):
        make_whiteout(str(up / f"k{i}.csv"))  # deletions under the source
    (session.upper / "local.txt").write_text("local\n")
    listed = run_cli("diff", session.name, home=home).stdout.splitlines()
    assert len(listed) == 6
    assert _row(home)["changes"] == 6


def test_interrupted_commit_is_named(session: Session, home: Path, lower: Path) -> None:
    (lower / "a.txt").write_text("a\n")
    (session.upper / "a.txt").write_text("b\n")
    (session.upper / "c.txt").write_text("c\n")
    crashed = run_cli("commit", session.name, home=home, check=False,
                      env={CRASH_ENV: "6"})
    assert crashed.returncode == CRASH_EXIT
    row = _row(home)
    interrupted = row["interrupted"]
    assert isinstance(interrupted, list) and str(interrupted[0]).startswith("commit ")
    assert "interrupted commit" in run_cli("status", home=home).stdout
    run_cli("diff", session.name, home=home)  # the next command finishes it
    assert _row(home)["interrupted"] == []


def test_a_landed_commit_is_not_reported_failed_when_the_mount_cannot_be_told(
        session: Session, lower: Path) -> None:
    (session.upper / "a.txt").write_text("a\n")

    class Silent(Unmounted):
        """A mount whose daemon does not answer the invalidation."""

        def changed(self, paths: Iterable[str] | None) -> None:
            raise MountError(f"session {session.name}: control socket: timed out")

    result = commit(session, [], mount=Silent())
    assert (lower / "a.txt").read_text() == "a\n"
    assert result.warning is not None and "committed, but" in result.warning


def _sectors_written(device: str) -> int:
    """Sectors written to block device /dev/NAME so far (its stat file)."""
    fields = Path(f"/sys/block/{Path(device).name}/stat").read_text().split()
    return int(fields[6])


def test_review_verbs_flush_the_sessions_file_system_not_every_one(
        mount_session: Mount, tmp_path: Path) -> None:
    """The daemon makes the upper durable before a review verb reads it with
    syncfs of the upper's file system, not sync(2): `status`, `diff` or a
    snapshot (the kernel's recorder takes one per event) must not wait for
    another file system's dirty pages, say a big copy to a slow disk. Dirty
    data on a second file system (a loop-mounted ext4 without a journal, so
    no commit of its own flushes it) stays unwritten across them."""
    s = mount_session()
    (s.mnt / "new.txt").write_text("new\n")
    with loop_ext4(tmp_path / "other.img", tmp_path / "other") as device:
        (tmp_path / "other" / "dirty").write_bytes(os.urandom(8 << 20))
        before = _sectors_written(device)
        assert _row(s.home)["changes"] == 1
        assert s.cli("diff", s.name).stdout == "A  new.txt\n"
        s.cli("snapshot", s.name)
        assert _sectors_written(device) == before  # sync(2) would write 16,384 and more
        os.sync()
        assert _sectors_written(device) >= before + (8 << 20) // 512  # (the probe works)
