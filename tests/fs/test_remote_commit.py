"""Changes under a source mounted from the session's mount table are shown
by diff and written back through that source's driver by commit (here a
second local directory mounted at /mnt/other: the driver interface is the
same for S3). Never into the project directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from astrid_fs import diffview, journal
from astrid_fs.commit import commit, session_changes
from astrid_fs.drivers.local import LocalDriver
from astrid_fs.errors import ConflictError, UsageError
from astrid_fs.journal import CRASH_EXIT, Steps
from astrid_fs.review_cli import open_and_recover
from astrid_fs.session import Session
from astrid_fs.whiteout import Origin, make_whiteout, set_opaque, set_origin
from tests.fs.treecompare import tree_state

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
