"""Changes under a source mounted from the session's mount table are shown
by diff and written back through that source's driver by commit: a second
local directory mounted at /mnt/other, and a real S3 server (s3rver) at
/mnt/s3 through a real astrid-fs mount. Never into the project directory."""
# ruff: noqa: F811  (fixtures imported from s3_fixture are parameters here)

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.cli.review import open_and_recover
from astrid_fs.drivers.local import LocalDriver
from astrid_fs.errors import ConflictError, UsageError
from astrid_fs.overlay.whiteout import Origin, make_whiteout, set_opaque, set_origin
from astrid_fs.review import diffview, journal
from astrid_fs.review.commit import commit, session_changes
from astrid_fs.review.journal import CRASH_EXIT, Steps
from astrid_fs.session import Session
from tests.fs.s3_fixture import ACCESS_KEY, S3Target, s3, s3_server  # noqa: F401
from tests.fs.treecompare import tree_state
from tests.support.mounts import MountedSession

REMOTE = "mnt/other"


def _setup(session: Session, tmp_path: Path, read_only: bool = False) -> Path:
    other = tmp_path / "other-source"
    (other / "dir").mkdir(parents=True)
    (other / "a.csv").write_text("a\n")
    (other / "b.csv").write_text("b\n")
    (other / "dir" / "c.csv").write_text("c\n")
    (other / "keep.csv").write_text("keep\n")
    ro = "read_only = true\n" if read_only else ""
    (session.root / "mounts.toml").write_text(
        f'[[mount]]\npath = "/{REMOTE}"\nsource = "{other}"\n{ro}')
    up = session.upper / REMOTE
    (up / "dir").mkdir(parents=True)
    names = session.xattrs
    (up / "a.csv").write_text("a, edited\n")  # copied up: origin with the fingerprint
    st = os.lstat(other / "a.csv")
    set_origin(str(up / "a.csv"), names, Origin(
        "mnt/other/a.csv", "file", st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns,
        st.st_mode, LocalDriver(other).fingerprint("a.csv")))
    (up / "new.csv").write_text("new\n")
    make_whiteout(str(up / "b.csv"))
    set_opaque(str(up / "dir"), names)  # rm -r dir; mkdir dir
    (up / "dir" / "d.csv").write_text("d\n")
    (session.upper / "local.txt").write_text("local\n")
    return other


def test_diff_and_commit_write_back_through_the_driver(session: Session, lower: Path,
                                                      tmp_path: Path) -> None:
    other = _setup(session, tmp_path)
    lines = diffview.porcelain(session_changes(session)).splitlines()
    assert lines == ["A  local.txt", "M  mnt/other/a.csv", "D  mnt/other/b.csv",
                     "D  mnt/other/dir/c.csv", "A  mnt/other/dir/d.csv",
                     "A  mnt/other/new.csv"]
    commit(session, [])
    assert sorted(tree_state(other)) == ["a.csv", "dir", "dir/d.csv", "keep.csv", "new.csv"]
    assert (other / "a.csv").read_text() == "a, edited\n"
    assert (lower / "local.txt").read_text() == "local\n"
    assert not (lower / "mnt").exists()  # never into the project
    assert session_changes(session) == []
    assert not (session.upper / REMOTE).exists()


def test_conflict_on_a_mounted_source(session: Session, tmp_path: Path) -> None:
    other = _setup(session, tmp_path)
    (other / "a.csv").write_text("changed at the source\n")
    lines = diffview.porcelain(session_changes(session)).splitlines()
    assert "M! mnt/other/a.csv" in lines
    with pytest.raises(ConflictError, match=r"a\.csv"):
        commit(session, [])
    assert (other / "b.csv").exists()
    commit(session, [REMOTE + "/new.csv"])
    assert (other / "new.csv").read_text() == "new\n"


def test_read_only_source_is_refused_before_anything_is_written(
        session: Session, lower: Path, tmp_path: Path) -> None:
    other = _setup(session, tmp_path, read_only=True)
    with pytest.raises(UsageError, match="read-only"):
        commit(session, [])
    assert not (lower / "local.txt").exists() and (other / "b.csv").exists()
    commit(session, ["local.txt"])
    assert (lower / "local.txt").read_text() == "local\n"


def test_crash_at_every_step_with_a_mounted_source(session: Session, lower: Path,
                                                   tmp_path: Path) -> None:
    step = 0
    while True:
        step += 1
        for d in (lower, session.upper):
            for entry in os.listdir(d):
                os.system(f"rm -rf '{d / entry}'")
        os.system(f"rm -rf '{tmp_path / 'other-source'}'")
        other = _setup(session, tmp_path)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                commit(session, [], steps=Steps(crash_at=step))
                code = 0
            finally:
                os._exit(code)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code == 0:
            break
        assert code == CRASH_EXIT
        open_and_recover(session.name)
        assert journal.pending(session) == []
        remote = sorted(tree_state(other))
        assert remote in (["a.csv", "b.csv", "dir", "dir/c.csv", "keep.csv"],
                          ["a.csv", "dir", "dir/d.csv", "keep.csv", "new.csv"])
        if "new.csv" in remote:
            assert session_changes(session) == []
    assert step > 10


def test_commit_to_s3_through_a_real_mount(
        s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mount_session: Callable[..., MountedSession]) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "astrid-review-secret")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    s3.put("data/file.csv", b"a,b\n1,2\n")
    s3.put("data/old.csv", b"old\n")
    lower = tmp_path / "project"
    (lower / "mnt").mkdir(parents=True)  # (the overlay needs a real dir above a mount point)
    table = s3.mount_table(tmp_path)
    mounted = mount_session(lower, None, "--mounts", str(table))
    data = mounted.mnt / "mnt" / "s3" / "data"
    with open(data / "file.csv", "a") as f:
        f.write("3,4\n")
    (data / "new.txt").write_text("new\n")
    (data / "old.csv").unlink()
    diff = mounted.cli("diff", mounted.name).stdout.splitlines()
    assert diff == ["M  mnt/s3/data/file.csv", "A  mnt/s3/data/new.txt",
                    "D  mnt/s3/data/old.csv"]
    mounted.cli("commit", mounted.name)
    assert s3.get("data/file.csv") == b"a,b\n1,2\n3,4\n"
    assert s3.get("data/new.txt") == b"new\n"
    assert "data/old.csv" not in set(s3.keys())
    assert not (lower / "mnt" / "s3").exists()
    assert mounted.cli("diff", mounted.name).stdout == ""
    # A fresh mount shows what was committed. (A live mount still serves the
    # remote version it cached until its metadata TTL: the daemon's
    # `invalidate` does not drop the driver caches yet.)
    mounted.umount()
    mounted.mount("--mounts", str(table))
    assert (data / "file.csv").read_bytes() == b"a,b\n1,2\n3,4\n"
    assert sorted(os.listdir(data)) == ["file.csv", "new.txt"]
