"""Fixtures for the review/commit tests: an $ASTRID_HOME per test, sessions
over a scratch lower dir, and kernel overlayfs as a writer of upper layers."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from astrid_fs.session import Session, create_or_open_session


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("ASTRID_HOME", str(h))
    return h


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    d = tmp_path / "lower"
    d.mkdir()
    return d


@pytest.fixture
def session(home: Path, lower: Path) -> Session:
    return create_or_open_session("s1", lower, home)


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


@pytest.fixture
def overlay(tmp_path: Path) -> OverlayFactory:
    """`with overlay(session) as mnt:` mounts it with kernel overlayfs."""
    def make(session: Session) -> AbstractContextManager[Path]:
        return kernel_overlay(session, tmp_path / "mnt")
    return make
