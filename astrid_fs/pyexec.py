"""How astrid starts a Python child of its own: `python -P -m MODULE ...`.

`-P` keeps the directory the parent runs in off the child's import path.
That directory may be a project an agent wrote (and the user committed), and
some children run as root (the mount daemon): a planted `astrid_fs/` there
must never be what they import. Every Python child goes through here.
"""

from __future__ import annotations

import sys


def python_module(module: str, *args: str) -> list[str]:
    """argv running `module` with this interpreter, safe import path."""
    return [sys.executable, "-P", "-m", module, *args]
