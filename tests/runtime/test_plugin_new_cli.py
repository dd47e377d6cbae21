"""`astrid plugin new NAME [DIR]` scaffolds through the CLI, and refuses bad
names with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def astrid(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "astrid_runtime.client_cli", *args],
                          capture_output=True, text=True, check=False, timeout=60)


def test_plugin_new_scaffolds(tmp_path: Path) -> None:
    r = astrid("plugin", "new", "greeter", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "greeter" / "plugin.toml").is_file()
    assert (tmp_path / "greeter" / "app.py").is_file()


def test_plugin_new_refuses_bad_name_and_existing_dir(tmp_path: Path) -> None:
    r = astrid("plugin", "new", "bad/name", str(tmp_path))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert astrid("plugin", "new", "dup", str(tmp_path)).returncode == 0
    r = astrid("plugin", "new", "dup", str(tmp_path))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
