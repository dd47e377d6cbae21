"""Shared by the e2e tests: one ASTRID_HOME for the session, seeded with the
compile cache every test run fills once (tests/support/warmhome.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.mounts import require_fuse
from tests.support.warmhome import seed_home


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory, shipped_home: Path) -> Path:
    require_fuse()
    return seed_home(tmp_path_factory.mktemp("astrid-run-home"), shipped_home)
