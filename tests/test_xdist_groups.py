"""The suite's own scheduling: tests marked `xdist_group` run on one worker.

pytest-xdist 3.8 names groups where pytest 9 no longer looks, and nothing
failed: every group was spread over all workers, each building what the group
shares (minutes of plugin builds). tests/conftest.py names them again; this
runs a small suite with that conftest on two workers and reads who ran what.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_group_runs_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(
        "import pytest\n"
        "@pytest.mark.xdist_group('shared')\n"
        "@pytest.mark.parametrize('n', range(6))\n"
        "def test_in_group(n): pass\n"
        "@pytest.mark.parametrize('n', range(6))\n"
        "def test_free(n): pass\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-n", "2", "--dist",
         "loadgroup", "-v", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-c", os.devnull, str(tmp_path / "test_grouped.py")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stdout + run.stderr
    ran = re.findall(r"\[(gw\d)\] .*PASSED .*::(test_\w+)\[", run.stdout)
    assert len(ran) == 12, run.stdout
    assert len({worker for worker, name in ran if name == "test_in_group"}) == 1, run.stdout
