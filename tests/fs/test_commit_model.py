"""Model tests: random edits through kernel overlayfs (and through an
astrid-fs mount), then commits of random subsets of the changes. After each
commit the merged view is unchanged (no lost change) and finally the lower
equals what the mount showed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astrid_fs.cli.daemonlink import DaemonLink
from astrid_fs.review.commit import commit, session_changes
from astrid_fs.session import Session, create_or_open_session, open_session
from tests.fs.kernel_overlay import kernel_overlay, require_root
from tests.fs.treecompare import assert_same_tree, tree_state
from tests.support.mounts import MountedSession, require_fuse

PATHS = ["a", "b", "d1", "d1/x", "d1/y", "d2", "d2/z", "d2/sub", "d2/sub/w", "d3", "d3/q"]
path = st.sampled_from(PATHS)
op = st.one_of(
    st.tuples(st.just("write"), path, st.binary(max_size=8)),
    st.tuples(st.just("mkdir"), path),
    st.tuples(st.just("rm"), path),
    st.tuples(st.just("rename"), path, path),
    st.tuples(st.just("chmod"), path, st.sampled_from([0o600, 0o755, 0o700])),
    st.tuples(st.just("symlink"), path, st.sampled_from(["a", "d1/x", "nowhere"])),
    st.tuples(st.just("xattr"), path, st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("link"), path, path),
)


def build_lower(lower: Path) -> None:
    (lower / "d1").mkdir()
    (lower / "d1" / "x").write_text("x")
    (lower / "d1" / "y").write_text("y")
    (lower / "d2" / "sub").mkdir(parents=True)
    (lower / "d2" / "z").write_text("z")
    (lower / "d2" / "sub" / "w").write_text("w")
    (lower / "a").write_text("a")
    (lower / "b").symlink_to("a")


def apply(mnt: Path, step: tuple[object, ...]) -> None:
    kind, target = step[0], mnt / str(step[1])
    try:
        if kind == "write":
            target.write_bytes(step[2])  # type: ignore[arg-type]
        elif kind == "mkdir":
            target.mkdir()
        elif kind == "rm":
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        elif kind == "rename":
            os.rename(target, mnt / str(step[2]))
        elif kind == "chmod" and not target.is_symlink():
            os.chmod(target, step[2])  # type: ignore[arg-type]
        elif kind == "symlink":
            os.symlink(str(step[2]), target)
        elif kind == "xattr":
            os.setxattr(target, "user.t", step[2], follow_symlinks=False)  # type: ignore[arg-type]
        elif kind == "link":
            os.link(target, mnt / str(step[2]), follow_symlinks=False)
    except OSError:
        pass  # invalid on this tree: the mount refused it, as it should


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=12), data=st.data())
def test_random_edits_then_partial_commits(ops: list[tuple[object, ...]],
                                           data: st.DataObject) -> None:
    require_root()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lower = root / "lower"
        lower.mkdir()
        build_lower(lower)
        session = create_or_open_session("m", lower, root / "home")
        with kernel_overlay(session, root / "mnt") as mnt:
            for step in ops:
                apply(mnt, step)
            view = tree_state(mnt, mtimes=True)
        for _ in range(2):
            paths = sorted({c.path for c in session_changes(session)})
            if not paths:
                break
            part = data.draw(st.lists(st.sampled_from(paths), max_size=3, unique=True))
            if part:
                commit(session, part)
            with kernel_overlay(session, root / "mnt") as mnt:
                assert_same_tree(tree_state(mnt, mtimes=True), view)
        commit(session, [])
        assert_same_tree(tree_state(lower, mtimes=True), view)
        assert session_changes(session) == []
        with kernel_overlay(session, root / "mnt") as mnt:
            assert_same_tree(tree_state(mnt, mtimes=True), view)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=10), data=st.data())
def test_random_edits_through_astrid_fs_then_commits_while_mounted(
        ops: list[tuple[object, ...]], data: st.DataObject) -> None:
    """The same through the astrid-fs mount itself, committing while it is
    mounted: the mount must show the same tree after every commit."""
    with mounted_model("fm") as (session, link, lower, mnt):
        for step in ops:
            apply(mnt, step)
        view = tree_state(mnt, mtimes=True)
        paths = sorted({c.path for c in session_changes(session, link)})
        if paths:
            part = data.draw(st.lists(st.sampled_from(paths), max_size=3, unique=True))
            if part:
                commit(session, part, mount=link)
                assert_same_tree(tree_state(mnt, mtimes=True), view)
        commit(session, [], mount=link)
        assert_same_tree(tree_state(mnt, mtimes=True), view)
        assert_same_tree(tree_state(lower, mtimes=True), view)


@contextmanager
def mounted_model(name: str) -> Iterator[tuple[Session, DaemonLink, Path, Path]]:
    """The model's lower tree mounted through astrid-fs as session `name`."""
    require_fuse()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lower, mnt = root / "lower", root / "mnt"
        lower.mkdir()
        mnt.mkdir()
        build_lower(lower)
        mounted = MountedSession(name, root / "home", lower, mnt)
        mounted.mount()
        try:
            session = open_session(name, root / "home")
            yield session, DaemonLink(session), lower, mnt
        finally:
            mounted.umount()


def test_committing_the_path_a_rename_came_from_takes_the_rename_along() -> None:
    """Found by the model test above: `mv b a` (b a symlink, a a file), a new file
    `b`, then commit `b` alone. That replaced the lower b the renamed `a` is based
    on, so the next commit refused `a` ("lower b changed type"). Committing a path
    now takes along the changes based on its lower entry."""
    with mounted_model("fb") as (session, link, lower, mnt):
        os.rename(mnt / "b", mnt / "a")
        (mnt / "b").write_bytes(b"new")
        view = tree_state(mnt, mtimes=True)
        commit(session, ["b"], mount=link)
        assert_same_tree(tree_state(mnt, mtimes=True), view)
        commit(session, [], mount=link)
        assert_same_tree(tree_state(lower, mtimes=True), view)


def test_committing_a_deleted_dir_takes_the_rename_out_of_it_along() -> None:
    """Found by the random test above (2026-12-04): `mv d2/z a; rm -r d2`,
    then commit d2 alone. d2's deletion took the lower d2/z that `a` is the
    rename of, so the next commit refused `a` ("lower d2/z was deleted since
    the session copied it"). A change that takes a lower tree away (a deleted
    or replaced dir, a moved one) now lands with the changes based on any
    entry in that tree."""
    with mounted_model("fd") as (session, link, lower, mnt):
        os.rename(mnt / "d2" / "z", mnt / "a")
        shutil.rmtree(mnt / "d2")
        view = tree_state(mnt, mtimes=True)
        commit(session, ["d2"], mount=link)
        assert_same_tree(tree_state(mnt, mtimes=True), view)
        commit(session, [], mount=link)
        assert_same_tree(tree_state(mnt, mtimes=True), view)
        assert_same_tree(tree_state(lower, mtimes=True), view)


def test_committing_one_name_of_a_hard_linked_copy_leaves_the_other_committable() -> None:
    """Found by the random test above: `ln d2/z d3; mv d2/z d1/x`, then
    commit d3 alone. d3 lands as the move of the lower d2/z; d1/x is the same
    upper inode, whose origin still named d2/z, so the next commit refused it
    as a conflict with a deleted d2/z. The landing now makes the lower d3 the
    origin of the names left (journal._repoint_siblings)."""
    ops: list[tuple[object, ...]] = [("write", "d2/sub/w", b""), ("rm", "b"),
                                      ("link", "d2/z", "d3"), ("rename", "d2/z", "d1/x")]
    with mounted_model("fm") as (session, link, lower, mnt):
        for step in ops:
            apply(mnt, step)
        view = tree_state(mnt, mtimes=True)
        commit(session, ["d3"], mount=link)
        assert_same_tree(tree_state(mnt, mtimes=True), view)
        assert [c.conflict for c in session_changes(session, link)] == [None] * len(
            session_changes(session, link))
        commit(session, [], mount=link)
        assert_same_tree(tree_state(mnt, mtimes=True), view)
        assert_same_tree(tree_state(lower, mtimes=True), view)
        for here, _dirs, files in os.walk(lower):  # no overlay xattr reached the project
            for name in files:
                full = os.path.join(here, name)
                assert not [k for k in os.listxattr(full, follow_symlinks=False)
                            if "overlay" in k], full
