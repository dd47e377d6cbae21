"""Fixtures for the review/commit tests: an $ASTRID_HOME per test, sessions
over a scratch lower dir, and kernel overlayfs as a writer of upper layers."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from astrid_fs.session import Session, create_or_open_session
from tests.fs.kernel_overlay import OverlayFactory, kernel_overlay


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


@pytest.fixture
def overlay(tmp_path: Path) -> OverlayFactory:
    """`with overlay(session) as mnt:` mounts it with kernel overlayfs."""
    def make(session: Session) -> AbstractContextManager[Path]:
        return kernel_overlay(session, tmp_path / "mnt")
    return make
