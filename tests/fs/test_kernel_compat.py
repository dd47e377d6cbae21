"""The session upper layer is in overlayfs's on-disk format: after a run of
changes through astrid-fs, kernel overlayfs mounts the same upper and shows
the same tree."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.support.mounts import MountedSession, tree_state

Mount = Callable[..., MountedSession]


def test_kernel_overlayfs_sees_the_same_tree(tmp_path: Path, mount_session: Mount) -> None:
    lower = tmp_path / "lower"
    (lower / "a" / "b").mkdir(parents=True)
    (lower / "a" / "b" / "deep.txt").write_text("deep")
    (lower / "a" / "keep.txt").write_text("keep")
    (lower / "gone").mkdir()
    (lower / "gone" / "x").write_text("x")
    (lower / "file.txt").write_text("file")
    os.setxattr(lower / "file.txt", "user.k", b"v")
    s = mount_session(lower)
    m = s.mnt
    os.rename(m / "a", m / "renamed")                 # redirect
    os.unlink(m / "renamed" / "keep.txt")             # whiteout in a redirected dir
    (m / "renamed" / "b" / "deep.txt").write_text("changed")  # copy-up under it
    for f in os.listdir(m / "gone"):
        os.unlink(m / "gone" / f)
    os.rmdir(m / "gone")
    os.mkdir(m / "gone")                              # opaque
    (m / "gone" / "new").write_text("new")
    os.setxattr(m / "file.txt", "user.k2", b"v2")
    os.symlink("file.txt", m / "link")
    os.link(m / "file.txt", m / "hard")
    expected = tree_state(m)
    s.umount()

    kmnt = tmp_path / "kmnt"
    kmnt.mkdir()
    work = s.root / "kwork"
    work.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={s.upper},workdir={work},redirect_dir=on",
                    str(kmnt)], check=True)
    try:
        assert tree_state(kmnt) == expected
    finally:
        subprocess.run(["umount", str(kmnt)], check=True)
