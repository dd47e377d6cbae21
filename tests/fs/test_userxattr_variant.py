"""The `userxattr` variant of the upper format (for uppers that unprivileged
kernel overlayfs must mount): user.overlay.* xattrs, no redirects — a lower
directory that is renamed is copied up whole — and kernel overlayfs with
`userxattr` shows the same tree."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.mounts import mounted_points, require_fuse, tree_state


def test_userxattr_upper_mounts_with_kernel_overlayfs(tmp_path: Path) -> None:
    require_fuse()
    lower, upper, work, mnt, kwork, kmnt = (tmp_path / n for n in
                                            ("l", "u", "w", "m", "kw", "km"))
    for d in (lower, upper, work, mnt, kwork, kmnt):
        d.mkdir()
    (lower / "dir" / "sub").mkdir(parents=True)
    (lower / "dir" / "sub" / "f").write_text("f")
    (lower / "dir" / "g").write_text("g")
    (lower / "gone").mkdir()
    (lower / "gone" / "x").write_text("x")
    subprocess.run(["mount", "-t", "fuse.astrid-fs", "astrid-fs", str(mnt), "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work},userxattr"],
                   check=True, timeout=60)
    try:
        os.rename(mnt / "dir", mnt / "moved")
        assert (mnt / "moved" / "sub" / "f").read_text() == "f"
        os.unlink(mnt / "gone" / "x")
        os.rmdir(mnt / "gone")
        os.mkdir(mnt / "gone")
        expected = tree_state(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert str(mnt) not in mounted_points()
    names = set(os.listxattr(upper / "moved"))
    assert "user.overlay.opaque" in names and not any("redirect" in n for n in names)
    assert os.getxattr(upper / "gone", "user.overlay.opaque") == b"y"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={kwork},userxattr",
                    str(kmnt)], check=True)
    try:
        assert tree_state(kmnt) == expected
    finally:
        subprocess.run(["umount", str(kmnt)], check=True)
