"""One module is the kernel's only user of `wasmtime._ffi` (wasmtime-py's private
ctypes bindings, which change between releases): `abi/canon.py`, whose C API
section names what the rest may call. A new import elsewhere fails here.

`STILL_TO_MOVE` lists modules that predate the rule and still import it; each
should move its calls behind canon's names (func_call, set_epoch_deadline, ...)
and leave this list.
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "astrid_runtime"
OWNER = "abi/canon.py"
STILL_TO_MOVE = {"abi/cap.py", "abi/links.py", "approval/interceptors.py"}
_IMPORT = re.compile(r"^\s*(from wasmtime import .*\b_ffi\b|import wasmtime\._ffi|"
                     r"from wasmtime\._ffi import)", re.MULTILINE)


def test_only_canon_imports_wasmtime_ffi() -> None:
    users = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if _IMPORT.search(p.read_text())}
    assert OWNER in users
    assert users - {OWNER} <= STILL_TO_MOVE, f"new users of wasmtime._ffi: " \
        f"{sorted(users - {OWNER} - STILL_TO_MOVE)}; use astrid_runtime.abi.canon's C API"
