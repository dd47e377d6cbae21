"""Hard links of the project stay links in the session (issue 9, item 5):
a write through one name shows through the other, both report one inode
and a link count that adds up, also after a remount; `cp -a`/`tar` then
see one file."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.support.mounts import MountedSession

MountFactory = Callable[..., MountedSession]


def linked_project(tmp_path: Path) -> Path:
    lower = tmp_path / "project"
    (lower / "sub").mkdir(parents=True)
    (lower / "a").write_text("base\n")
    os.link(lower / "a", lower / "b")
    os.link(lower / "a", lower / "sub" / "c")
    return lower


def test_write_through_one_name_shows_through_the_others(mount_session: MountFactory,
                                                         tmp_path: Path) -> None:
    lower = linked_project(tmp_path)
    mounted = mount_session(lower)
    mnt = mounted.mnt
    with open(mnt / "a", "a") as f:
        f.write("more\n")
    assert (mnt / "b").read_text() == "base\nmore\n"
    assert (mnt / "sub" / "c").read_text() == "base\nmore\n"
    sts = [os.stat(mnt / n) for n in ("a", "b", "sub/c")]
    assert len({st.st_ino for st in sts}) == 1
    assert [st.st_nlink for st in sts] == [3, 3, 3]
    # The project is untouched until commit.
    assert (lower / "b").read_text() == "base\n"
    assert os.stat(lower / "a").st_nlink == 3
    mounted.umount()
    mounted.mount()
    assert (mnt / "b").read_text() == "base\nmore\n"
    assert (mnt / "sub" / "c").read_text() == "base\nmore\n"
    assert len({os.stat(mnt / n).st_ino for n in ("a", "b", "sub/c")}) == 1


def test_link_counts_follow_links_and_unlinks(mount_session: MountFactory,
                                              tmp_path: Path) -> None:
    lower = linked_project(tmp_path)
    mnt = mount_session(lower).mnt
    with open(mnt / "b", "a") as f:
        f.write("x\n")
    os.link(mnt / "a", mnt / "d")
    assert os.stat(mnt / "d").st_nlink == 4
    os.unlink(mnt / "sub" / "c")
    assert os.stat(mnt / "a").st_nlink == 3
    assert (mnt / "d").read_text() == "base\nx\n"


def test_tar_and_cp_a_keep_one_file(mount_session: MountFactory, tmp_path: Path) -> None:
    lower = linked_project(tmp_path)
    mnt = mount_session(lower).mnt
    with open(mnt / "a", "a") as f:
        f.write("more\n")
    out = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(mnt), str(out)], check=True)
    assert os.stat(out / "a").st_ino == os.stat(out / "b").st_ino
    assert (out / "b").read_text() == "base\nmore\n"
    listing = subprocess.run(["tar", "-cvf", "/dev/null", "-C", str(mnt), "."],
                             capture_output=True, text=True, check=True).stdout
    assert "./b" in listing
    tarball = tmp_path / "t.tar"
    subprocess.run(["tar", "-cf", str(tarball), "-C", str(mnt), "a", "b"], check=True)
    untar = tmp_path / "untar"
    untar.mkdir()
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(untar)], check=True)
    assert (untar / "b").read_text() == "base\nmore\n"
    assert os.stat(untar / "a").st_ino == os.stat(untar / "b").st_ino


def test_removing_a_lower_name_counts_for_the_others(mount_session: MountFactory,
                                                     tmp_path: Path) -> None:
    """Found by the model test: an editor's save over one name (temp file
    renamed over it) left the other name reporting nlink 2."""
    lower = linked_project(tmp_path)
    mnt = mount_session(lower).mnt
    (mnt / "tmp").write_text("saved\n")
    os.rename(mnt / "tmp", mnt / "b")
    assert os.stat(mnt / "a").st_nlink == 2
    os.unlink(mnt / "sub" / "c")
    assert os.stat(mnt / "a").st_nlink == 1
    assert (mnt / "a").read_text() == "base\n"
    assert (mnt / "b").read_text() == "saved\n"
    assert os.stat(lower / "a").st_nlink == 3  # the project is untouched


def test_a_reader_follows_the_other_name_up_after_a_save_over_one(
        mount_session: MountFactory, tmp_path: Path) -> None:
    """Found by the model test: read through one name (the daemon keeps an
    fd on the lower file), save over that name (the other name moves to the
    upper layer to keep its link count), then truncate the other name: its
    reads came from the stale lower fd (9 bytes where stat said 100)."""
    lower = tmp_path / "project"
    (lower / "d2").mkdir(parents=True)
    (lower / "f1").write_bytes(b"lower f1\n")
    os.link(lower / "f1", lower / "d2" / "f1")
    mnt = mount_session(lower).mnt
    assert (mnt / "d2" / "f1").read_bytes() == b"lower f1\n"
    (mnt / "new").write_bytes(b"")
    os.rename(mnt / "new", mnt / "d2" / "f1")
    os.truncate(mnt / "f1", 100)
    assert os.stat(mnt / "f1").st_size == 100
    assert (mnt / "f1").read_bytes() == b"lower f1\n" + bytes(91)
    assert (mnt / "d2" / "f1").read_bytes() == b""
    assert (lower / "f1").read_bytes() == b"lower f1\n"
