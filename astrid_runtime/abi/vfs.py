"""`astrid:kernel/vfs`: the `dir` and `file` resources over a plugin's `PluginVfs`.

The rules (grants, resolution beneath a directory fd, limits, handle
tables) live in `astrid_runtime/vfs.py`; this module only converts
between component values and those calls. Handles are host resources:
`dir` (type 1) and `file` (type 2) whose `rep` indexes the plugin's handle
table. A guest cannot forge one (the component model checks every handle
against the caller's own resource table) and dropping one closes its fd
(the resource destructor). Handles of an instance that died are closed by
the supervisor (`PluginVfs.close_all`) before a new instance starts.

Without a `PluginVfs` (a kernel started with no roots, e.g. plain
`astridd`), `root` answers `denied` for a root outside the grant and
`unavailable` for one inside it.

Every refusal is an error value for the guest and an audit line
(`vfs.refused`) for the person; nothing raises into the guest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wasmtime.component import LinkerInstance, ResourceType

from astrid_runtime.abi.canon import (
    BYTES,
    ENUM,
    ERROR,
    STRING,
    U32,
    U64,
    Err,
    ListCodec,
    ResultCodec,
)
from astrid_runtime.abi.context import PluginContext
from astrid_runtime.abi.hostfunc import HostFuncs, Signature
from astrid_runtime.abi.outcome import call, error
from astrid_runtime.abi.resource import (
    FLAGS,
    RESOURCE,
    S64,
    RecordCodec,
    ResourceError,
    own,
    rep_of,
)
from astrid_runtime.errors import Refusal
from astrid_runtime.vfs import EntryStat, PluginVfs, root_grants

INTERFACE = "astrid:kernel/vfs@0.1.0"
DIR, FILE = 1, 2

STAT = RecordCodec((("kind", ENUM), ("size", U64), ("mtime-ns", U64), ("mode", U32)))
DIR_ENTRY = RecordCodec((("name", STRING), ("kind", ENUM)))

_UNIT = ResultCodec(None, ERROR)
_DIR_RESULT = ResultCodec(RESOURCE, ERROR)
_FILE_RESULT = ResultCodec(RESOURCE, ERROR)

SIGNATURES: dict[str, Signature] = {
    "root": Signature((STRING,), _DIR_RESULT),
    "[method]dir.open-dir": Signature((RESOURCE, STRING), _DIR_RESULT),
    "[method]dir.open-file": Signature((RESOURCE, STRING, FLAGS), _FILE_RESULT),
    "[method]dir.list": Signature((RESOURCE, STRING), ResultCodec(ListCodec(DIR_ENTRY), ERROR)),
    "[method]dir.stat": Signature((RESOURCE, STRING), ResultCodec(STAT, ERROR)),
    "[method]dir.mkdir": Signature((RESOURCE, STRING), _UNIT),
    "[method]dir.remove": Signature((RESOURCE, STRING), _UNIT),
    "[method]dir.rename": Signature((RESOURCE, STRING, STRING), _UNIT),
    "[method]file.read": Signature((RESOURCE, U32), ResultCodec(BYTES, ERROR)),
    "[method]file.write": Signature((RESOURCE, BYTES), ResultCodec(U32, ERROR)),
    "[method]file.seek": Signature((RESOURCE, S64, ENUM), ResultCodec(U64, ERROR)),
    "[method]file.stat": Signature((RESOURCE,), ResultCodec(STAT, ERROR)),
}


def _stat(s: EntryStat) -> tuple[str, int, int, int]:
    return (s.kind, s.size, s.mtime_ns, s.mode)


def define(funcs: HostFuncs, inst: LinkerInstance, ctx: PluginContext) -> None:
    def vfs() -> PluginVfs:
        if ctx.vfs is None:
            raise Refusal("unavailable", "no vfs roots in this kernel (no session mounted)")
        return ctx.vfs

    def drop(_store: Any, rep: int) -> None:
        # Runs inside wasmtime's destructor callback: must never raise.
        if ctx.vfs is not None:
            ctx.vfs.drop(rep)

    inst.add_resource("dir", ResourceType.host(DIR), drop)
    inst.add_resource("file", ResourceType.host(FILE), drop)

    def audited(op: str, detail: str, fn: Callable[[], Any]) -> object:
        outcome = call(fn)
        if isinstance(outcome, Err) and ctx.vfs is not None:
            ctx.vfs.refused(op, detail, outcome.value.tag, outcome.value.payload)
        return outcome

    def handle(c: int, ptr: int, type_id: int) -> int:
        try:
            return rep_of(c, ptr, type_id)
        except ResourceError as e:
            raise Refusal("invalid", f"bad handle: {e}") from None

    def new(c: int, rep: int, type_id: int) -> int:
        try:
            return own(c, rep, type_id)
        except ResourceError as e:
            vfs().drop(rep)
            raise Refusal("internal", str(e)) from None

    def root(c: int, name: str) -> object:
        def run() -> int:
            if ctx.vfs is None and name not in root_grants(ctx.grants.vfs):
                raise Refusal("denied", f"vfs root {name!r} not granted")
            return new(c, vfs().root(name), DIR)
        return audited("root", name, run)

    def open_dir(c: int, d: int, path: str) -> object:
        return audited("open-dir", path,
                       lambda: new(c, vfs().open_dir(handle(c, d, DIR), path), DIR))

    def open_file(c: int, d: int, path: str, flags: frozenset[str]) -> object:
        return audited("open-file", f"{path} {','.join(sorted(flags))}",
                       lambda: new(c, vfs().open_file(handle(c, d, DIR), path, flags), FILE))

    def list_(c: int, d: int, path: str) -> object:
        return audited("list", path, lambda: vfs().list(handle(c, d, DIR), path))

    def stat(c: int, d: int, path: str) -> object:
        return audited("stat", path, lambda: _stat(vfs().stat(handle(c, d, DIR), path)))

    def mkdir(c: int, d: int, path: str) -> object:
        return audited("mkdir", path, lambda: vfs().mkdir(handle(c, d, DIR), path))

    def remove(c: int, d: int, path: str) -> object:
        return audited("remove", path, lambda: vfs().remove(handle(c, d, DIR), path))

    def rename(c: int, d: int, src: str, dst: str) -> object:
        return audited("rename", f"{src} -> {dst}",
                       lambda: vfs().rename(handle(c, d, DIR), src, dst))

    def read(c: int, f: int, length: int) -> object:
        return audited("read", str(length), lambda: vfs().read(handle(c, f, FILE), length))

    def write(c: int, f: int, data: bytes) -> object:
        return audited("write", str(len(data)), lambda: vfs().write(handle(c, f, FILE), data))

    def seek(c: int, f: int, offset: int, whence: str) -> object:
        return audited("seek", f"{offset} {whence}",
                       lambda: vfs().seek(handle(c, f, FILE), offset, whence))

    def fstat(c: int, f: int) -> object:
        return audited("stat", "", lambda: _stat(vfs().fstat(handle(c, f, FILE))))

    impls: dict[str, Callable[..., object]] = {
        "root": root, "[method]dir.open-dir": open_dir, "[method]dir.open-file": open_file,
        "[method]dir.list": list_, "[method]dir.stat": stat, "[method]dir.mkdir": mkdir,
        "[method]dir.remove": remove, "[method]dir.rename": rename,
        "[method]file.read": read, "[method]file.write": write, "[method]file.seek": seek,
        "[method]file.stat": fstat,
    }
    for name, sig in SIGNATURES.items():
        funcs.add(inst, name, sig, impls[name], with_context=True)


__all__ = ["DIR", "FILE", "INTERFACE", "define", "error"]
