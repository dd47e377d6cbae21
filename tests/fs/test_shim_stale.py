"""A FUSE shim older than its source is not preloaded (it may not match the
Python side): `shim_stale` says so, for the mount command's warning, instead
of every mount quietly running without it (slower; a benchmark taken so
measures the wrong thing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from astrid_fs.fuse import shim


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    lib, source = tmp_path / "libastrid_fuse_shim.so", tmp_path / "fuse_shim.c"
    lib.write_bytes(b"\x7fELF")
    source.write_text("/* shim */\n")
    monkeypatch.setattr(shim, "SHIM", lib)
    monkeypatch.delenv(shim.SHIM_ENV, raising=False)
    return lib, source


def test_a_shim_built_after_its_source_is_used(built: tuple[Path, Path]) -> None:
    lib, source = built
    os.utime(source, ns=(1_000_000_000, 1_000_000_000))
    os.utime(lib, ns=(2_000_000_000, 2_000_000_000))
    assert shim.shim_path() == lib
    assert shim.shim_stale() is None


def test_a_source_edited_after_the_build_is_reported(built: tuple[Path, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    lib, source = built
    os.utime(lib, ns=(1_000_000_000, 1_000_000_000))
    os.utime(source, ns=(2_000_000_000, 2_000_000_000))
    assert shim.shim_path() is None
    why = shim.shim_stale()
    assert why is not None and "older than fuse_shim.c" in why and "scripts/setup.sh" in why
    monkeypatch.setenv(shim.SHIM_ENV, str(lib))  # an explicit build is the caller's choice
    assert shim.shim_stale() is None


def test_no_build_at_all_is_not_stale(built: tuple[Path, Path]) -> None:
    lib, _ = built
    lib.unlink()
    assert shim.shim_stale() is None
