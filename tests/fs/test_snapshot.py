"""Snapshots restore the upper layer exactly (whiteouts, opaque and
redirect xattrs, modes, xattrs, hard links), share what did not change,
and are never altered by later in-place writes to the upper."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from astrid_fs.cli.review import open_and_recover
from astrid_fs.review.entrycopy import copy_tree
from astrid_fs.review.journal import CRASH_EXIT, Steps
from astrid_fs.review.snapshot import list_snapshots, rollback, snapshot
from astrid_fs.session import Session
from tests.fs.kernel_overlay import OverlayFactory
from tests.fs.scenario import build_lower, edit_through
from tests.fs.treecompare import assert_same_tree, tree_state


def exact(session: Session) -> dict[str, object]:
    return dict(tree_state(session.upper, mtimes=True, private=True))


def test_rollback_restores_upper_exactly(session: Session, lower: Path,
                                         overlay: OverlayFactory) -> None:
    build_lower(lower)
    with overlay(session) as mnt:
        edit_through(mnt)
        view1 = tree_state(mnt, mtimes=True)
    upper1 = exact(session)
    first = snapshot(session, "first")
    assert first.number == 1 and first.changes == 22
    with overlay(session) as mnt:
        (mnt / "src" / "main.py").write_text("third version\n")
        os.chmod(mnt / "renamed", 0o700)
        os.unlink(mnt / "opq" / "fresh")
        os.rename(mnt / "renamed", mnt / "renamed-again")
        (mnt / "brand-new").write_text("new\n")
        os.setxattr(mnt / "xattr.txt", "user.color", b"red")
    assert exact(session) != upper1
    rollback(session, "first")
    assert_same_tree(exact(session), upper1)  # type: ignore[arg-type]
    with overlay(session) as mnt:
        assert_same_tree(tree_state(mnt, mtimes=True), view1)


def test_in_place_write_never_alters_a_snapshot(session: Session, lower: Path) -> None:
    (lower / "f.txt").write_text("lower\n")
    live = session.upper / "f.txt"
    live.write_text("version 1\n")
    snapshot(session)
    snap_file = session.snapshots_dir / "0001" / "tree" / "f.txt"
    assert os.stat(snap_file).st_ino != os.stat(live).st_ino
    with open(live, "r+b") as f:  # what a mount does: write the upper file in place
        f.write(b"VERSION 2\n")
    assert snap_file.read_text() == "version 1\n"
    second = snapshot(session)
    assert second.copied == 1
    with open(live, "r+b") as f:
        f.write(b"Version 3\n")
    assert (session.snapshots_dir / "0002" / "tree" / "f.txt").read_text() == "VERSION 2\n"
    rollback(session, "1")
    assert live.read_text() == "version 1\n"
    with open(live, "r+b") as f:
        f.write(b"v4 after rb\n")
    assert snap_file.read_text() == "version 1\n"


def test_unchanged_files_are_shared_between_snapshots(session: Session, lower: Path) -> None:
    for i in range(20):
        (session.upper / f"f{i}").write_text(f"{i}\n")
    first = snapshot(session)
    assert (first.entries, first.copied) == (20, 20)
    (session.upper / "f3").write_text("changed\n")
    second = snapshot(session, "two")
    assert (second.entries, second.copied) == (20, 1)
    a = session.snapshots_dir / "0001" / "tree"
    b = session.snapshots_dir / "0002" / "tree"
    assert os.stat(a / "f0").st_ino == os.stat(b / "f0").st_ino
    assert os.stat(a / "f3").st_ino != os.stat(b / "f3").st_ino
    assert [(s.number, s.name) for s in list_snapshots(session)] == [(1, ""), (2, "two")]


def test_interrupted_rollback_is_finished_by_next_command(session: Session,
                                                          lower: Path) -> None:
    (session.upper / "a").write_text("a1\n")
    snapshot(session)
    (session.upper / "a").write_text("a2\n")
    (session.upper / "b").write_text("b\n")
    # a rollback that died right after writing its record
    (session.journal_dir / "rollback.json").write_text(json.dumps({"snapshot": 1}))
    open_and_recover(session.name)
    assert sorted(os.listdir(session.upper)) == ["a"]
    assert (session.upper / "a").read_text() == "a1\n"
    assert not (session.journal_dir / "rollback.json").exists()


def test_hard_links_survive_snapshot_and_rollback(session: Session, lower: Path) -> None:
    (session.upper / "one").write_text("shared\n")
    os.link(session.upper / "one", session.upper / "two")
    snapshot(session)
    (session.upper / "two").unlink()
    (session.upper / "one").write_text("other\n")
    rollback(session, "1")
    assert os.stat(session.upper / "one").st_ino == os.stat(session.upper / "two").st_ino
    assert (session.upper / "two").read_text() == "shared\n"


def test_crash_at_every_rollback_step(session: Session, lower: Path,
                                      overlay: OverlayFactory, tmp_path: Path) -> None:
    build_lower(lower)
    with overlay(session) as mnt:
        edit_through(mnt)
    snapshot(session)
    wanted = exact(session)
    with overlay(session) as mnt:
        (mnt / "src" / "main.py").write_text("later\n")
        shutil.rmtree(mnt / "renamed")
        (mnt / "opq" / "more").write_text("more\n")
        os.chmod(mnt / "xattr.txt", 0o600)
    saved = tmp_path / "saved"
    copy_tree(str(session.root), str(saved))
    step = 0
    while True:
        step += 1
        shutil.rmtree(session.root)
        copy_tree(str(saved), str(session.root))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                rollback(session, "1", Steps(crash_at=step))
                code = 0
            finally:
                os._exit(code)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code == 0:
            break
        assert code == CRASH_EXIT
        open_and_recover(session.name)
        assert_same_tree(exact(session), wanted)  # type: ignore[arg-type]
        assert not list(session.tmp.glob("rollback-*"))
    assert step > 10
