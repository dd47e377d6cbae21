"""Several lower layers (overlayfs's lowerdir=A:B): through `astrid-fs mount
--lower A --lower B`, through the mount helper form, and a session stacked
over another session's upper. Kernel overlayfs over the same layers is the
reference for what the merged tree must look like."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fs.treecompare import assert_same_tree, tree_state
from tests.support.mounts import MountedSession, mounted_points

MountFactory = Callable[..., MountedSession]


def build_layers(top: Path, bottom: Path) -> None:
    for d in (top, bottom):
        d.mkdir()
    (bottom / "only-bottom.txt").write_text("bottom\n")
    (bottom / "both.txt").write_text("bottom version\n")
    (top / "both.txt").write_text("top version\n")
    (bottom / "dir").mkdir()
    (bottom / "dir" / "b.txt").write_text("b\n")
    (top / "dir").mkdir()
    (top / "dir" / "a.txt").write_text("a\n")
    (bottom / "file-then-dir").write_text("a file below\n")
    (top / "file-then-dir").mkdir()
    (top / "file-then-dir" / "inside").write_text("dir on top\n")


@contextmanager
def kernel_stack(lowers: list[Path], mnt: Path) -> Iterator[Path]:
    mnt.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    "lowerdir=" + ":".join(str(p) for p in lowers), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_two_lowers_merge_like_kernel_overlayfs(mount_session: MountFactory,
                                                tmp_path: Path) -> None:
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    build_layers(top, bottom)
    before = (tree_state(top), tree_state(bottom))
    mounted = mount_session(top, None, "--lower", str(bottom))
    with kernel_stack([top, bottom], tmp_path / "ref") as ref:
        assert_same_tree(tree_state(mounted.mnt), tree_state(ref))
    assert (mounted.mnt / "both.txt").read_text() == "top version\n"
    assert sorted(os.listdir(mounted.mnt / "dir")) == ["a.txt", "b.txt"]
    # Writes land in the upper; no lower layer is touched.
    (mounted.mnt / "only-bottom.txt").write_text("edited\n")
    (mounted.mnt / "dir" / "b.txt").unlink()
    assert sorted(os.listdir(mounted.mnt / "dir")) == ["a.txt"]
    assert (tree_state(top), tree_state(bottom)) == before
    assert (mounted.upper / "only-bottom.txt").read_text() == "edited\n"


def test_session_stacked_over_another_sessions_upper(mount_session: MountFactory,
                                                     tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "keep.txt").write_text("keep\n")
    (project / "gone.txt").write_text("to be removed\n")
    (project / "src").mkdir()
    (project / "src" / "old.py").write_text("old\n")
    first = mount_session(project)
    (first.mnt / "gone.txt").unlink()  # a whiteout in the first upper
    (first.mnt / "keep.txt").write_text("changed by the first session\n")
    (first.mnt / "src" / "old.py").unlink()
    (first.mnt / "src").rmdir()
    (first.mnt / "src").mkdir()  # an opaque directory in the first upper
    (first.mnt / "src" / "new.py").write_text("new\n")
    want = tree_state(first.mnt)
    first.umount()
    second = mount_session(first.upper, None, "--lower", str(project))
    assert_same_tree(tree_state(second.mnt), want)
    (second.mnt / "src" / "more.py").write_text("second session\n")
    assert sorted(os.listdir(second.mnt / "src")) == ["more.py", "new.py"]
    assert not (first.upper / "src" / "more.py").exists()  # lower layers stay read-only


def test_mount_helper_form_takes_lowerdir_a_colon_b(tmp_path: Path) -> None:
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    build_layers(top, bottom)
    upper, work, mnt = tmp_path / "upper", tmp_path / "work", tmp_path / "mnt"
    for d in (upper, work, mnt):
        d.mkdir()
    subprocess.run(["mount", "-t", "fuse.astrid-fs", "astrid-fs", str(mnt), "-o",
                    f"lowerdir={top}:{bottom},upperdir={upper},workdir={work}"],
                   check=True, capture_output=True, text=True)
    try:
        assert str(mnt) in mounted_points()
        with kernel_stack([top, bottom], tmp_path / "ref") as ref:
            assert_same_tree(tree_state(mnt), tree_state(ref))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_commit_of_a_stacked_session_is_refused_cleanly(mount_session: MountFactory,
                                                        tmp_path: Path) -> None:
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    build_layers(top, bottom)
    before = (tree_state(top), tree_state(bottom))
    mounted = mount_session(top, None, "--lower", str(bottom))
    (mounted.mnt / "new.txt").write_text("new\n")
    result = mounted.cli("commit", mounted.name, check=False)
    assert result.returncode != 0
    assert "single lower" in result.stderr and "Traceback" not in result.stderr
    assert (tree_state(top), tree_state(bottom)) == before


def test_renamed_directory_in_a_stacked_upper_keeps_its_children(
        mount_session: MountFactory, tmp_path: Path) -> None:
    """unionmount-testsuite --ov=3 (rename-pop-dir and friends): a session
    renamed a project directory (a redirect in its upper); stacked beneath
    a new session, the renamed directory still shows the project's files,
    and renaming it once more keeps them."""
    project = tmp_path / "project"
    (project / "a" / "dir100").mkdir(parents=True)
    (project / "a" / "dir100" / "a").write_text("child\n")
    first = mount_session(project)
    os.rename(first.mnt / "a" / "dir100", first.mnt / "a" / "no_dir100")
    assert os.listdir(first.mnt / "a" / "no_dir100") == ["a"]
    first.umount()
    second = mount_session(first.upper, None, "--lower", str(project))
    assert os.listdir(second.mnt / "a" / "no_dir100") == ["a"]
    assert not (second.mnt / "a" / "dir100").exists()
    os.rename(second.mnt / "a" / "no_dir100", second.mnt / "a" / "dir100")
    assert (second.mnt / "a" / "dir100" / "a").read_text() == "child\n"
    with kernel_stack([first.upper, project], tmp_path / "ref") as ref:
        assert os.listdir(ref / "a" / "no_dir100") == ["a"]
