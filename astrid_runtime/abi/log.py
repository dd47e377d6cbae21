"""`astrid:kernel/log`: plugin log lines into the kernel's structured log."""

from __future__ import annotations

from wasmtime.component import LinkerInstance

from astrid_runtime.abi.canon import (
    ENUM,
    ERROR,
    OK_UNIT,
    STRING,
    ListCodec,
    ResultCodec,
    TupleCodec,
)
from astrid_runtime.abi.context import PluginContext
from astrid_runtime.abi.hostfunc import HostFuncs, Signature
from astrid_runtime.abi.outcome import error

INTERFACE = "astrid:kernel/log@0.1.0"
MAX_MESSAGE_BYTES = 8 * 1024
MAX_FIELDS = 32
MAX_FIELD_BYTES = 1024

WRITE = Signature((ENUM, STRING, ListCodec(TupleCodec(STRING, STRING))), ResultCodec(None, ERROR))


def define(funcs: HostFuncs, inst: LinkerInstance, ctx: PluginContext) -> None:
    def write(level: str, message: str, fields: list[tuple[str, str]]) -> object:
        # len(str) <= len(utf-8) <= 4 * len(str): encode only when it could matter
        if len(message) * 4 > MAX_MESSAGE_BYTES and len(message.encode()) > MAX_MESSAGE_BYTES:
            return error("too-large", f"log message over {MAX_MESSAGE_BYTES} bytes")
        if len(fields) > MAX_FIELDS:
            return error("too-large", f"more than {MAX_FIELDS} log fields")
        for k, v in fields:
            if len(k) + len(v) > MAX_FIELD_BYTES:
                return error("too-large", f"log field {k[:40]!r} over {MAX_FIELD_BYTES} bytes")
        ctx.log(ctx.name, level, message, fields)
        return OK_UNIT

    funcs.add(inst, "write", WRITE, write)
