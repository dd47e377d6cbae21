"""Shared by the e2e tests: one ASTRID_HOME for the session, so the plugins'
compile cache (keyed and MAC'd by that home's kernel key) is filled once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.mounts import require_fuse


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_fuse()
    return tmp_path_factory.mktemp("astrid-run-home")
