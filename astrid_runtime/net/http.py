"""`astrid:kernel/http`: the host side of `send` and the `body` resource.

The rules (grant, approval, secrets, the connection pool) live in
`service.py`; this module converts component values. A `body` is a host
resource (type 3; vfs uses 1 and 2) whose `rep` names an open response in
the kernel's `HttpService`; dropping it closes the connection.

Waiting for the network is not the plugin's time: like `cap.request` after
a person answered, `send` and `read` give the guest a fresh call deadline
when they return after more than one epoch tick, so a model that takes a
minute to answer does not trap the plugin. The wait itself is bounded by
the client's timeouts (service.TIMEOUT).
"""

from __future__ import annotations

from typing import Any

from wasmtime.component import LinkerInstance, ResourceType

from astrid_runtime.abi.canon import (
    BYTES,
    ERROR,
    STRING,
    U32,
    ListCodec,
    ResultCodec,
    TupleCodec,
)
from astrid_runtime.abi.context import PluginContext
from astrid_runtime.abi.hostfunc import HostFuncs, Signature
from astrid_runtime.abi.outcome import call
from astrid_runtime.abi.resource import RESOURCE, RecordCodec, ResourceError, own, rep_of
from astrid_runtime.abi.waits import waited
from astrid_runtime.errors import Refusal
from astrid_runtime.net.service import HttpRequest, HttpService

INTERFACE = "astrid:kernel/http@0.1.0"
BODY = 3

_PAIRS = ListCodec(TupleCodec(STRING, STRING))
REQUEST = RecordCodec((("method", STRING), ("url", STRING), ("headers", _PAIRS),
                       ("body", BYTES), ("details", _PAIRS)))
RESPONSE = RecordCodec((("status", U32), ("headers", _PAIRS), ("body", RESOURCE)))


def define(funcs: HostFuncs, inst: LinkerInstance, ctx: PluginContext) -> None:
    def service() -> HttpService:
        if ctx.http is None:
            raise Refusal("unavailable", "this kernel makes no HTTP requests for plugins "
                          "(start it with `astrid run --provider ...`)")
        return ctx.http

    def drop(_store: Any, rep: int) -> None:
        # Runs inside wasmtime's destructor callback: must never raise.
        if ctx.http is not None:
            ctx.http.drop(ctx.name, rep)

    inst.add_resource("body", ResourceType.host(BODY), drop)

    def send(c: int, raw: tuple[str, str, list[tuple[str, str]], bytes,
                                list[tuple[str, str]]]) -> object:
        method, url, headers, body, details = raw

        def run() -> tuple[int, list[tuple[str, str]], int]:
            req = HttpRequest(method, url, tuple(headers), body, tuple(details))
            head = waited(c, ctx, lambda: service().send(ctx.name, ctx.grants.cap,
                                                          ctx.approvals, req))
            try:
                handle = own(c, head.rep, BODY)
            except ResourceError as e:
                service().drop(ctx.name, head.rep)
                raise Refusal("internal", str(e)) from None
            return (head.status, list(head.headers), handle)
        return call(run)

    def read(c: int, b: int) -> object:
        def run() -> bytes:
            try:
                rep = rep_of(c, b, BODY)
            except ResourceError as e:
                raise Refusal("invalid", f"bad handle: {e}") from None
            chunk: bytes = waited(c, ctx, lambda: service().read(ctx.name, rep))
            return chunk
        return call(run)

    funcs.add(inst, "send", Signature((REQUEST,), ResultCodec(RESPONSE, ERROR)), send,
              with_context=True)
    funcs.add(inst, "[method]body.read", Signature((RESOURCE,), ResultCodec(BYTES, ERROR)),
              read, with_context=True)


__all__ = ["BODY", "INTERFACE", "define"]
