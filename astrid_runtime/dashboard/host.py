"""The kernel side of a frontend plugin's WIT (astrid_runtime/wit/frontend/frontend.wit).

Two directions:

- `astrid:kernel/dashboard@0.1.0`, imported: `state()` and `diff(session)`, the
  kernel's view a dashboard renders. Defined on every plugin's linker (as
  `http` is), answered only for a plugin whose pinned `cap` grant names
  `dashboard.read` (`denied` otherwise) in a kernel that serves a dashboard
  (`unavailable` otherwise). The data comes from a `FrontendData` the
  dashboard service sets on the plugin's context.
- `astrid:kernel/http-handler@0.1.0`, exported: `handle(request) -> response`,
  called by `call_handler` on the plugin's live instance under its fuel and
  deadline (frontend.py owns the rules around it).

`diff` runs `astrid-fs diff` (a subprocess, up to seconds): waiting for it is
not the guest's time, so the guest gets a fresh call deadline afterwards, as
`cap.request` and `http.send` do.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Protocol

from wasmtime.component import LinkerInstance

from astrid_runtime.abi.canon import (
    BYTES,
    ERROR,
    STRING,
    U32,
    Codec,
    ListCodec,
    ResultCodec,
    TupleCodec,
    val_delete,
)
from astrid_runtime.abi.hostfunc import HostFuncs, Signature
from astrid_runtime.abi.outcome import call
from astrid_runtime.abi.resource import RecordCodec
from astrid_runtime.abi.waits import waited
from astrid_runtime.errors import Refusal

if TYPE_CHECKING:
    from astrid_runtime.abi.context import PluginContext
    from astrid_runtime.sandbox import PluginInstance

INTERFACE = "astrid:kernel/dashboard@0.1.0"
HANDLER = "astrid:kernel/http-handler@0.1.0"
#: The `cap` grant entries: be handed HTTP requests; read the kernel's view.
SERVE_GRANT = "http.serve"
READ_GRANT = "dashboard.read"


class FrontendData(Protocol):
    """What `astrid:kernel/dashboard` answers from; called in the guest's thread.
    Both raise `Refusal` for an error value."""

    def state(self) -> str: ...
    def diff(self, session: str) -> str: ...


_PAIRS = ListCodec(TupleCodec(STRING, STRING))
REQUEST = RecordCodec((("method", STRING), ("path", STRING), ("query", STRING),
                       ("headers", _PAIRS), ("body", BYTES)))


class _ResponseCodec(Codec):
    """`response` as an export's result: read in place, then the C value freed."""

    fields = RecordCodec((("status", U32), ("headers", _PAIRS), ("body", BYTES)))

    def lift(self, c: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            status, headers, body = self.fields.peek(ctypes.addressof(c))
        finally:
            val_delete(c)
        return int(status), list(headers), bytes(body)


#: `handle: func(req: request) -> response`
HANDLE = Signature((REQUEST,), _ResponseCodec())

Request = tuple[str, str, str, list[tuple[str, str]], bytes]
Answer = tuple[int, list[tuple[str, str]], bytes]


def call_handler(instance: PluginInstance, request: Request) -> Answer:
    """Worker thread, with the plugin's guest lock held: its `handle` export's answer.
    `PluginCrash` on a trap; `Refusal('unavailable')` when it exports no handler."""
    handle = instance.export(HANDLER, "handle", HANDLE)
    if handle is None:
        raise Refusal("unavailable", f"plugin {instance.name} does not export {HANDLER}")
    answer: Answer = instance.call(handle, request)
    return answer


def define(funcs: HostFuncs, inst: LinkerInstance, ctx: PluginContext) -> None:
    def source() -> FrontendData:
        if ctx.frontend is None:
            raise Refusal("unavailable", "this kernel serves no dashboard (start it with "
                          "`astrid dashboard` or `astrid run --dashboard`)")
        if READ_GRANT not in ctx.grants.cap:
            raise Refusal("denied", f"{READ_GRANT} is not in plugin {ctx.name}'s cap grant")
        return ctx.frontend

    def state(c: int) -> object:
        return call(lambda: waited(c, ctx, lambda: source().state()))

    def diff(c: int, session: str) -> object:
        return call(lambda: waited(c, ctx, lambda: source().diff(session)))

    result = ResultCodec(STRING, ERROR)
    funcs.add(inst, "state", Signature((), result), state, with_context=True)
    funcs.add(inst, "diff", Signature((STRING,), result), diff, with_context=True)


__all__ = ["HANDLER", "INTERFACE", "READ_GRANT", "SERVE_GRANT", "FrontendData",
           "call_handler", "define"]
