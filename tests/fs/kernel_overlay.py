"""Kernel overlayfs as a writer (and reader) of session upper layers."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from astrid_fs.session import Session


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (kernel overlayfs, trusted.* xattrs, mknod)")


@contextmanager
def kernel_overlay(session: Session, mnt: Path) -> Iterator[Path]:
    """Mount `session` with kernel overlayfs (redirect_dir=on) at `mnt`."""
    require_root()
    mnt.mkdir(exist_ok=True)
    opts = (f"lowerdir={session.lower},upperdir={session.upper},"
            f"workdir={session.work},redirect_dir=on")
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"kernel overlayfs mount failed: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


OverlayFactory = Callable[[Session], AbstractContextManager[Path]]
