"""A lower tree with one of everything, and a session script that changes
each kind of thing through a mount (kernel overlayfs or astrid-fs)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def build_lower(root: Path) -> None:
    (root / "src").mkdir()
    (root / "src" / "main.py").write_text("print('hello')\n")
    (root / "src" / "util.py").write_text("def f():\n    return 1\n")
    (root / "docs").mkdir()
    (root / "docs" / "a.md").write_text("# A\n")
    (root / "docs" / "sub").mkdir()
    (root / "docs" / "sub" / "b.md").write_text("# B\n")
    (root / "old").mkdir()
    (root / "old" / "x.txt").write_text("x\n")
    (root / "old" / "deep").mkdir()
    (root / "old" / "deep" / "y.txt").write_text("y\n")
    (root / "gone.txt").write_text("delete me\n")
    (root / "chmod.sh").write_text("#!/bin/sh\n")
    (root / "link").symlink_to("src/main.py")
    (root / "was_file").write_text("file\n")
    (root / "was_dir").mkdir()
    (root / "was_dir" / "inner").write_text("inner\n")
    (root / "mv_me.txt").write_text("move me\n")
    (root / "bin.dat").write_bytes(bytes(range(256)) * 4)
    (root / "opq").mkdir()
    (root / "opq" / "keep").write_text("hidden soon\n")
    (root / "xattr.txt").write_text("x\n")
    (root / "touch.txt").write_text("t\n")
    os.utime(root / "touch.txt", ns=(1_000_000_000, 1_000_000_000))


def edit_through(mnt: Path) -> None:
    """One of each change kind, done through a mounted view."""
    (mnt / "src" / "main.py").write_text("print('hello, world')\n")
    (mnt / "src" / "new.py").write_text("NEW = 1\n")
    (mnt / "gone.txt").unlink()
    shutil.rmtree(mnt / "docs" / "sub")
    os.rename(mnt / "old", mnt / "renamed")
    (mnt / "renamed" / "x.txt").write_text("x changed\n")
    os.chmod(mnt / "chmod.sh", 0o755)
    os.unlink(mnt / "link")
    os.symlink("src/util.py", mnt / "link")
    os.unlink(mnt / "was_file")
    (mnt / "was_file").mkdir()
    (mnt / "was_file" / "child").write_text("child\n")
    shutil.rmtree(mnt / "was_dir")
    (mnt / "was_dir").write_text("now a file\n")
    os.rename(mnt / "mv_me.txt", mnt / "src" / "moved.txt")
    (mnt / "bin.dat").write_bytes(bytes(range(255, -1, -1)) * 4)
    shutil.rmtree(mnt / "opq")
    (mnt / "opq").mkdir()
    (mnt / "opq" / "fresh").write_text("fresh\n")
    os.setxattr(mnt / "xattr.txt", "user.color", b"blue")
    os.utime(mnt / "touch.txt", ns=(2_000_000_000, 2_000_000_000))
    (mnt / "newdir" / "nested").mkdir(parents=True)
    (mnt / "newdir" / "nested" / "f.txt").write_text("f\n")
    os.link(mnt / "newdir" / "nested" / "f.txt", mnt / "newdir" / "hard.txt")
