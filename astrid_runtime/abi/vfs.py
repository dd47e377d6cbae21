"""`astrid:kernel/vfs`: defined so every plugin links; refuses until issue 5.

`root(name)` returns `denied` when the grant does not name the root and
`unavailable` when it does (the VFS is not built yet). No `dir` or `file`
handle can exist, so the resource methods are unreachable; they are
defined (answering `unavailable`) only so that components importing the
interface instantiate.
"""

from __future__ import annotations

from wasmtime.component import LinkerInstance, ResourceType

from astrid_runtime.abi.canon import DROP, ERROR, STRING, ResultCodec
from astrid_runtime.abi.context import PluginContext
from astrid_runtime.abi.hostfunc import HostFuncs, Signature
from astrid_runtime.abi.outcome import error

INTERFACE = "astrid:kernel/vfs@0.1.0"

_REFUSE = ResultCodec(None, ERROR)
_METHODS = {
    "dir": {"open-dir": 2, "open-file": 3, "list": 2, "stat": 2, "mkdir": 2, "remove": 2,
            "rename": 3},
    "file": {"read": 2, "write": 2, "seek": 3, "stat": 1},
}
_RESOURCE_IDS = {"dir": 1, "file": 2}


def define(funcs: HostFuncs, inst: LinkerInstance, ctx: PluginContext) -> None:
    for resource, rid in _RESOURCE_IDS.items():
        inst.add_resource(resource, ResourceType.host(rid), lambda _store, _rep: None)
        for method, arity in _METHODS[resource].items():
            funcs.add(inst, f"[method]{resource}.{method}", Signature((DROP,) * arity, _REFUSE),
                      lambda *_: error("unavailable", "vfs is not available yet"))

    def root(name: str) -> object:
        if name not in ctx.grants.vfs:
            return error("denied", f"vfs root {name!r} not granted")
        return error("unavailable", "vfs is not available yet")

    funcs.add(inst, "root", Signature((STRING,), _REFUSE), root)
