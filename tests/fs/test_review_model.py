"""Issue 10, "Done when": a model test that drives two sessions and the
project at once — edits, editor-style saves (temp file + rename), renames,
deletes, snapshots, rollbacks, discards, `resolve --ours`, `update`, and
commits from both sessions, one after the other and both at once (two
threads, the project's commit lock between them) — and checks after every
commit that

- no edit in the project was overwritten or deleted without a conflict being
  reported: every project file a commit changed held, just before, exactly
  what the session's change was based on (the project's content when the
  session first touched that file), and
- a conflict-free commit leaves the project equal to the session's view.

The model knows, per session, the project content each touched path was
based on. Conflicts the system reports beyond the model's (a base taken
before the session touched a path) are allowed: they lose nothing.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from astrid_fs.cli.daemonlink import DaemonLink
from astrid_fs.errors import ConflictError
from astrid_fs.fuse import control
from astrid_fs.review.bases import record_if_fresh
from astrid_fs.review.commit import commit, session_changes
from astrid_fs.review.discard import discard
from astrid_fs.review.resolve import resolve, update
from astrid_fs.review.snapshot import rollback, snapshot
from astrid_fs.session import Session, open_session
from tests.fs.conftest import drop_kept
from tests.support.mounts import MountedSession

Mount = Callable[..., MountedSession]
FILES = ["a.txt", "b.txt", "c.txt", "d/e.txt", "d/f.txt"]
ABSENT = None
file = st.sampled_from(FILES)
side = st.sampled_from([0, 1])
op = st.one_of(
    st.tuples(st.just("write"), side, file),
    st.tuples(st.just("save"), side, file),  # an editor: temp file + rename over
    st.tuples(st.just("rm"), side, file),
    st.tuples(st.just("mv"), side, file, file),
    st.tuples(st.just("user_write"), file),
    st.tuples(st.just("user_rm"), file),
    st.tuples(st.just("snapshot"), side),
    st.tuples(st.just("rollback"), side),
    st.tuples(st.just("discard"), side, file),
    st.tuples(st.just("commit"), side),
    st.tuples(st.just("commit_both")),
    st.tuples(st.just("resolve_ours"), side),
    st.tuples(st.just("update"), side),
)
_words = itertools.count()


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return ABSENT


def _files(root: Path) -> dict[str, str | None]:
    return {f: _read(root / f) for f in FILES}


@dataclass
class Side:
    mounted: MountedSession
    session: Session
    based: dict[str, str | None] = field(default_factory=dict)
    snaps: list[dict[str, str | None]] = field(default_factory=list)  # since the last reset

    @property
    def mnt(self) -> Path:
        return self.mounted.mnt

    @property
    def link(self) -> DaemonLink:
        return DaemonLink(self.session)

    def touch(self, path: str, lower: Path) -> None:
        """Record what the project held when the session first changed `path`."""
        self.based.setdefault(path, _read(lower / path))


def _reset(sides: list[Side], lower: Path) -> None:
    for s in sides:
        control.sync(s.session)
        (s.session.root / "unmerged.json").unlink(missing_ok=True)
        drop_kept(s.session.root)  # (the daemon holds the pack: a review's drop)
        for entry in os.scandir(s.session.upper):  # (what discard --all does)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        shutil.rmtree(s.session.snapshots_dir)
        s.session.snapshots_dir.mkdir()
        s.based, s.snaps = {}, []
    shutil.rmtree(lower)
    (lower / "d").mkdir(parents=True)
    for f in FILES[:3] + FILES[3:4]:
        (lower / f).write_text(f"{f} v0\n")
    for s in sides:
        assert record_if_fresh(s.session.root, s.session.lower, s.session.upper)
        control.notify_changed(s.session, None)


def _session_op(s: Side, lower: Path, step: tuple[object, ...]) -> None:
    kind, path = str(step[0]), str(step[2])
    target = s.mnt / path
    word = f"{kind} {next(_words)}\n"
    try:
        if kind == "write":
            s.touch(path, lower)
            target.write_text(word)
        elif kind == "save":
            s.touch(path, lower)
            tmp = target.with_name(f".{target.name}.swp")
            tmp.write_text(word)
            os.rename(tmp, target)
        elif kind == "rm" and target.exists():
            s.touch(path, lower)
            target.unlink()
        elif kind == "mv" and target.exists() and path != step[3]:
            s.touch(path, lower)
            s.touch(str(step[3]), lower)
            os.rename(target, s.mnt / str(step[3]))
    except FileNotFoundError:
        pass


def _commit(s: Side, lower: Path) -> None:
    view, before = _files(s.mnt), _files(lower)
    try:
        commit(s.session, [], mount=s.link)
    except ConflictError:
        return
    after = _files(lower)
    for path in FILES:
        if after[path] != before[path]:
            assert path in s.based, f"commit changed {path}, which the session never touched"
            assert before[path] == s.based[path], (
                f"commit overwrote {path}: the project held {before[path]!r}, the session "
                f"was based on {s.based[path]!r}, and no conflict was reported")
    assert after == view, "a conflict-free commit must leave the project as the session saw it"
    assert _files(s.mnt) == view
    s.based, s.snaps = {}, []


def _commit_both(sides: list[Side], lower: Path) -> None:
    """Both sessions commit at the same moment. The project's commit lock
    lets one land first; the other then lands only what its base vouches
    for (else it reports conflicts). Whichever order it was, some order of
    the commits that landed must explain the project, each landing only
    over what its session was based on."""
    before = _files(lower)
    views = [_files(s.mnt) for s in sides]
    changed = [{p for c in session_changes(s.session, s.link) for p in (c.path, c.lower_path)
                if p in FILES} for s in sides]  # (a rename changes its source too)
    landed = [False, False]
    errors: list[BaseException] = []

    def land(i: int) -> None:
        try:
            commit(sides[i].session, [], mount=sides[i].link)
            landed[i] = True
        except ConflictError:
            pass
        except BaseException as e:  # (re-raised below, in the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=land, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    after = _files(lower)
    explained = [order for order in ((0, 1), (1, 0))
                 if _replay(order, before, views, changed, landed, sides) == after]
    assert explained, (f"no order of the commits explains the project: before {before}, "
                       f"after {after}, landed {landed}, views {views}")
    for i, s in enumerate(sides):
        if landed[i]:  # all of it landed: the session now shows the project
            assert _files(s.mnt) == after
            s.based, s.snaps = {}, []


def _replay(order: tuple[int, int], before: dict[str, str | None],
            views: list[dict[str, str | None]], changed: list[set[str]],
            landed: list[bool], sides: list[Side]) -> dict[str, str | None] | None:
    """The project after the landed commits in `order`, or None where one
    would have overwritten a project edit its session was not based on."""
    state = dict(before)
    for i in order:
        if not landed[i]:
            continue
        for path in changed[i]:
            if views[i][path] == state[path]:
                continue
            if path not in sides[i].based or sides[i].based[path] != state[path]:
                return None
            state[path] = views[i][path]
    return state


def _run(sides: list[Side], lower: Path, steps: list[tuple[object, ...]]) -> None:
    for step in steps:
        kind = str(step[0])
        if kind == "commit_both":
            _commit_both(sides, lower)
        elif kind == "user_write":
            (lower / str(step[1])).write_text(f"user {next(_words)}\n")
        elif kind == "user_rm":
            (lower / str(step[1])).unlink(missing_ok=True)
        elif kind in ("write", "save", "rm", "mv"):
            _session_op(sides[int(str(step[1]))], lower, step)
        else:
            s = sides[int(str(step[1]))]
            if kind == "snapshot":
                snapshot(s.session, mount=s.link)
                s.snaps.append(dict(s.based))
            elif kind == "rollback" and s.snaps:
                # (only to a snapshot taken since the session's last commit or discard)
                rollback(s.session, str(_last_number(s.session, len(s.snaps))), mount=s.link)
                s.based = dict(s.snaps[-1])
            elif kind == "discard":
                try:
                    discard(s.session, [str(step[2])], mount=s.link)
                except Exception as e:  # no change there: a usage error, nothing done
                    assert "no change at" in str(e)
                    continue
                # what the session shows as the project's again is untouched again
                view, now = _files(s.mnt), _files(lower)
                s.based = {p: b for p, b in s.based.items() if view[p] != now[p]}
                s.snaps = []
            elif kind == "commit":
                _commit(s, lower)
            elif kind == "resolve_ours":
                # knowingly keep the session's versions: the project as it is
                # now is what they are based on from here on
                # (a conflicting rename keeps its source's removal too)
                conflicts = [p for c in session_changes(s.session, s.link) if c.conflict
                             for p in (c.path, c.lower_path) if p]
                if conflicts:
                    resolve(s.session, [], "ours", s.link)
                    now = _files(lower)
                    for p in conflicts:
                        if p in s.based:
                            s.based[p] = now[p]
                    s.snaps = []
            elif kind == "update":
                now = _files(lower)
                sources = {c.path: c.lower_path for c in session_changes(s.session, s.link)
                           if c.lower_path and c.lower_path != c.path}
                # (a merged rename carries the project's change of its source
                # to its new name: the source's removal is then based on it)
                merged = [p for o in update(s.session, [], s.link)
                          if o.result in ("merged", "markers")
                          for p in (o.path, sources.get(o.path)) if p]
                for p in merged:
                    s.based[p] = now[p]
                if merged:
                    s.snaps = []
    for s in sides:
        _commit(s, lower)


def _last_number(session: Session, count: int) -> int:
    from astrid_fs.review.snapshot import list_snapshots

    mine = [snap for snap in list_snapshots(session) if not snap.auto]
    assert len(mine) >= count
    return mine[-1].number


def test_two_sessions_and_the_project_at_once(tmp_path: Path, mount_session: Mount) -> None:
    lower = tmp_path / "project"
    (lower / "d").mkdir(parents=True)
    mounted = [mount_session(lower, None, "--lower-ttl", "0") for _ in range(2)]
    sides = [Side(m, open_session(m.name)) for m in mounted]

    @settings(max_examples=30, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(st.lists(op, min_size=1, max_size=14))
    # found 2026-12-05: a save over a file the user added, then deleted
    @example(steps=[("user_write", "d/f.txt"), ("save", 0, "d/f.txt"), ("user_rm", "d/f.txt")])
    def run(steps: list[tuple[object, ...]]) -> None:
        _reset(sides, lower)
        _run(sides, lower, steps)

    run()
