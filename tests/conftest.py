"""Fixtures shared by all test tiers: a scratch $ASTRID_HOME and real
astrid-fs mounts that are always unmounted afterwards."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.mounts import MountedSession, mounted_points, require_fuse
from tests.support.warmhome import build_template

_names = itertools.count()


@pytest.fixture(scope="session")
def shipped_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernel home with every pinned plugin compiled (tests/support/warmhome.py):
    seed test homes from it with `seed_home` so the run compiles each plugin once."""
    return build_template(tmp_path_factory.mktemp("shipped-home"))


@pytest.fixture
def astrid_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "astrid-home"
    home.mkdir()
    monkeypatch.setenv("ASTRID_HOME", str(home))
    return home


@pytest.fixture
def mount_session(tmp_path: Path, astrid_home: Path
                  ) -> Iterator[Callable[..., MountedSession]]:
    """Factory: mount_session(lower=None, name=None) -> a live MountedSession.

    Every session it mounted is unmounted at teardown; a mount left behind
    fails the test."""
    require_fuse()
    made: list[MountedSession] = []

    def make(lower: Path | None = None, name: str | None = None,
             *extra: str) -> MountedSession:
        n = next(_names)
        if lower is None:
            lower = tmp_path / f"lower{n}"
            lower.mkdir()
        mnt = tmp_path / f"mnt{n}"
        mnt.mkdir()
        session = MountedSession(name or f"s{n}", astrid_home, lower, mnt)
        session.mount(*extra)
        made.append(session)
        return session

    yield make
    leftovers = []
    for session in made:
        if str(session.mnt) in mounted_points():
            session.umount()
            leftovers.append(str(session.mnt))
    assert not [m for m in leftovers if m in mounted_points()], "mounts left behind"
