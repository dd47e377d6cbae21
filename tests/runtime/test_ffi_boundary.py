"""One module is the kernel's only user of `wasmtime._ffi` (wasmtime-py's private
ctypes bindings, which change between releases): `abi/capi.py`, whose names
(func_call, set_epoch_deadline, new_list, record_delete, ...) are what the rest
may call. A new import elsewhere fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "astrid_runtime"
OWNER = "abi/capi.py"
_IMPORT = re.compile(r"^\s*(from wasmtime import .*\b_ffi\b|import wasmtime\._ffi|"
                     r"from wasmtime\._ffi import|.*import_module\(.wasmtime\._ffi)", re.MULTILINE)


def test_only_capi_imports_wasmtime_ffi() -> None:
    users = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if _IMPORT.search(p.read_text())}
    assert users == {OWNER}, f"users of wasmtime._ffi besides {OWNER}: " \
        f"{sorted(users - {OWNER})}; call astrid_runtime.abi.capi's names instead"
