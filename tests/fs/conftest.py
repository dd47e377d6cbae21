"""Fixtures for the review/commit tests: an $ASTRID_HOME per test, sessions
over a scratch lower dir, and kernel overlayfs as a writer of upper layers;
for the copy-up tests, which thread makes unnamed files ahead; and a look
into a session's base-content pack (overlay/basepack.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from astrid_fs.overlay import cthreads
from astrid_fs.overlay.basepack import PACK_NAME, Pack
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


@pytest.fixture(params=["C", "python"])
def native(request: pytest.FixtureRequest) -> bool:
    """Files made ahead by the C thread (cthreads.py) or the Python one."""
    if request.param == "C":
        request.getfixturevalue("threads_always")
    return bool(request.param == "C")


@pytest.fixture
def threads_always() -> Iterator[Any]:
    """The C copy-up threads working however quick making a file is (the
    default, which a test may change: its mode is restored after); the
    library, loaded."""
    so = cthreads.lib()
    assert so is not None, \
        "the copy-up threads library is not built or stale: run scripts/setup.sh"
    so.astrid_copyup_mode(1)
    try:
        yield so
    finally:
        so.astrid_copyup_mode(cthreads.default_mode())


def unnamed_fds(d: Path) -> list[int]:
    """This process's fds on unnamed files of directory `d`."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(f"{d}/#") and target.endswith(" (deleted)"):
            out.append(int(name))
    return out


def kept_base(session_dir: Path, path: str) -> tuple[bytes, int] | None:
    """(content, mtime_ns) the session keeps as the base of lower `path`
    (its pack, as the review reads it), or None: none kept."""
    pack = Pack.open(session_dir / os.fsdecode(PACK_NAME), create=False)
    if pack is None:
        return None
    with pack:
        found = pack.read(os.fsencode(path))
    return None if found is None else (found[1], found[0].mtime_ns)


def kept_body(session_dir: Path, path: str) -> bytes | None:
    found = kept_base(session_dir, path)
    return None if found is None else found[0]


def kept_text(session_dir: Path, path: str) -> str | None:
    body = kept_body(session_dir, path)
    return None if body is None else body.decode()


def drop_kept(session_dir: Path, path: str = "") -> None:
    """Lose the base kept for `path` and below ("": all), as a review does."""
    pack = Pack.open(session_dir / os.fsdecode(PACK_NAME), sync=True, create=False)
    if pack is not None:
        with pack:
            pack.drop([os.fsencode(path)])
