"""`astrid:kernel/cap`: approval requests through the kernel's `ApprovalPipeline`.

`request` returns an `approval-token` when the pipeline approves (grant,
policy, ... see astrid_runtime/approval/pipeline.py), `denied` with the
reason otherwise (every decision is an audit line), `invalid` for an
action without kind or resource, `too-large` for oversized fields, and
`unavailable` in a kernel started without an approval pipeline (after
the grant check). A request that waited for a person gets a fresh call
deadline when it returns (approval/person.py).
"""

from __future__ import annotations

import time

from wasmtime.component import LinkerInstance

from astrid_runtime.abi.canon import (
    _MEM,
    _QQ,
    ERROR,
    STRING,
    U64,
    Codec,
    ListCodec,
    ResultCodec,
    TupleCodec,
)
from astrid_runtime.abi.capi import record_delete
from astrid_runtime.abi.context import PluginContext
from astrid_runtime.abi.hostfunc import HostFuncs, Signature
from astrid_runtime.abi.outcome import call, error
from astrid_runtime.abi.resource import RecordCodec
from astrid_runtime.abi.waits import rearm
from astrid_runtime.approval.pipeline import Action

INTERFACE = "astrid:kernel/cap@0.1.0"


class ActionCodec(Codec):
    """`record action { kind, resource, details }` -> (kind, resource, details)."""

    _fields = (STRING, STRING, ListCodec(TupleCodec(STRING, STRING)))
    #: record entries are {wasm_name_t name; wasmtime_component_val_t val}
    _ENTRY = 48
    _VAL_OFFSET = 16

    def peek(self, address: int) -> tuple[str, str, list[tuple[str, str]]]:
        _n, data = _QQ.unpack_from(_MEM, address + 8)
        out = [codec.peek(data + i * self._ENTRY + self._VAL_OFFSET)
               for i, codec in enumerate(self._fields)]
        return (out[0], out[1], out[2])

    def lift(self, c: object) -> tuple[str, str, list[tuple[str, str]]]:
        rec = c.of.record  # type: ignore[attr-defined]
        out = []
        for i, codec in enumerate(self._fields):
            entry = rec.data[i]  # names are freed with the record below
            out.append(codec.lift(entry.val))
            entry.val.kind = 0
        record_delete(rec)
        return (out[0], out[1], out[2])


#: `record approval-token { token, kind, resource, expires-at-ms }`
TOKEN = RecordCodec((("token", STRING), ("kind", STRING), ("resource", STRING),
                     ("expires-at-ms", U64)))


def define(funcs: HostFuncs, inst: LinkerInstance, ctx: PluginContext) -> None:
    def request(store_context: int, action: tuple[str, str, list[tuple[str, str]]]) -> object:
        kind, resource, details = action
        pipeline = ctx.approvals
        if pipeline is None:
            if kind not in ctx.grants.cap:
                return error("denied", f"action {kind!r} not granted")
            return error("unavailable", "this kernel has no approval pipeline")

        def run() -> tuple[str, str, str, int]:
            assert pipeline is not None
            started = time.monotonic()
            try:
                token = pipeline.request(Action(ctx.name, kind, resource, tuple(details)),
                                         ctx.grants.cap)
            finally:
                if time.monotonic() - started > pipeline.epoch_tick_ms / 1000:
                    rearm(store_context, ctx, pipeline.epoch_tick_ms)
            return (token.token, token.kind, token.resource, token.expires_at_ms)

        return call(run)

    funcs.add(inst, "request", Signature((ActionCodec(),), ResultCodec(TOKEN, ERROR)), request,
              with_context=True)
