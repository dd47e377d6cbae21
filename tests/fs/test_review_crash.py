"""Issue 10, "Done when": the crash-at-every-step coverage the commit journal
has, for snapshot and discard too (rollback: test_snapshot.py). A crash at
any step, then the next command, leaves no half-made snapshot and no change
half-discarded: each change is either as it was or gone, running discard
again finishes it, and the automatic snapshot (when it was completed) undoes
it exactly."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from astrid_fs.cli.review import open_and_recover
from astrid_fs.review.commit import session_changes
from astrid_fs.review.discard import discard
from astrid_fs.review.entrycopy import copy_tree
from astrid_fs.review.journal import CRASH_EXIT, Steps
from astrid_fs.review.snapshot import list_snapshots, snapshot, undo
from astrid_fs.session import Session
from tests.fs.kernel_overlay import OverlayFactory
from tests.fs.scenario import build_lower, edit_through
from tests.fs.treecompare import assert_same_tree, tree_state


def exact(session: Session) -> dict[str, object]:
    return dict(tree_state(session.upper, mtimes=True, private=True))


def _fork(fn: object) -> int:
    pid = os.fork()
    if pid == 0:  # child: run until the injected crash, never return to pytest
        code = 1
        try:
            fn()  # type: ignore[operator]
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _prepared(session: Session, lower: Path, overlay: OverlayFactory,
              tmp_path: Path) -> Path:
    build_lower(lower)
    with overlay(session) as mnt:
        edit_through(mnt)
    snapshot(session, "first")  # so a later snapshot also links to an earlier one
    with overlay(session) as mnt:
        (mnt / "src" / "main.py").write_text("later\n")
    saved = tmp_path / "saved"
    copy_tree(str(session.root), str(saved))
    return saved


def _restore(session: Session, saved: Path) -> None:
    shutil.rmtree(session.root)
    copy_tree(str(saved), str(session.root))


def test_crash_at_every_snapshot_step(session: Session, lower: Path,
                                      overlay: OverlayFactory, tmp_path: Path) -> None:
    saved = _prepared(session, lower, overlay, tmp_path)
    upper = exact(session)
    step = 0
    while True:
        step += 1
        _restore(session, saved)
        code = _fork(lambda at=step: snapshot(session, "second", Steps(crash_at=at)))
        if code == 0:
            break
        assert code == CRASH_EXIT
        open_and_recover(session.name)
        assert [s.name for s in list_snapshots(session)] == ["first"]  # none half-made
        assert not list(session.snapshots_dir.glob(".tmp-*"))
        assert_same_tree(exact(session), upper)  # type: ignore[arg-type]
    assert step > 10
    assert [s.name for s in list_snapshots(session)] == ["first", "second"]


def test_crash_at_every_discard_step(session: Session, lower: Path,
                                     overlay: OverlayFactory, tmp_path: Path) -> None:
    saved = _prepared(session, lower, overlay, tmp_path)
    paths = ["src", "renamed", "opq", "docs"]
    with overlay(session) as mnt:
        before = tree_state(mnt)
    upper = exact(session)
    discard(session, paths)
    with overlay(session) as mnt:
        after = tree_state(mnt)
    step = 0
    while True:
        step += 1
        _restore(session, saved)
        code = _fork(lambda at=step: discard(session, paths, Steps(crash_at=at)))
        if code == 0:
            break
        assert code == CRASH_EXIT
        open_and_recover(session.name)
        with overlay(session) as mnt:
            now = tree_state(mnt)
        for path in set(now) | set(before) | set(after):
            # every entry shows either the session's change or the project
            assert now.get(path) in (before.get(path), after.get(path)), (step, path)
        left = {c.path for c in session_changes(session)}
        # (a crash inside the rename's discard leaves its source looking deleted)
        still = [p for p in [*paths, "old"]
                 if any(c == p or c.startswith(p + "/") for c in left)]
        if still:
            discard(session, still)  # running discard again finishes it
        with overlay(session) as mnt:
            assert_same_tree(tree_state(mnt), after)
        snaps = list_snapshots(session)
        if snaps[-1].auto:
            undo(session)  # undoes the crashed discard (the last automatic snapshot
            # is the one the finishing discard took, or the crashed one's)
            assert exact(session) != {}
    assert step > 5
    _restore(session, saved)
    discard(session, paths)
    undo(session)
    assert_same_tree(exact(session), upper)  # type: ignore[arg-type]
