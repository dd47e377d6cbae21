"""The `plugin` world: a linker with every host interface, and the two exports."""

from __future__ import annotations

import ctypes
from typing import Any

from wasmtime import Engine, Store
from wasmtime.component import Func, Linker

from astrid_runtime.abi import bus, cap, kv, log, vfs, wasi_observed
from astrid_runtime.abi.canon import (
    BYTES,
    STRING,
    Codec,
    ResultCodec,
    Val,
    func_call,
    val_delete,
)
from astrid_runtime.abi.context import PluginContext
from astrid_runtime.abi.hostfunc import HostFuncs, Signature
from astrid_runtime.dashboard import host as dashboard
from astrid_runtime.net import http

#: `http` and `dashboard` are not in the `plugin` world; defining them lets worlds that
#: import them link.
INTERFACES = (log, bus, kv, vfs, cap, http, dashboard)

#: `export init: func(config: string) -> result<_, string>`
INIT = Signature((STRING,), ResultCodec(None, STRING))
#: `export on-message: func(topic: string, payload: list<u8>) -> result<_, string>`
ON_MESSAGE = Signature((STRING, BYTES), ResultCodec(None, STRING))


class PluginLinker:
    """A component linker defining the whole Host ABI for one plugin."""

    def __init__(self, engine: Engine, ctx: PluginContext):
        self.linker = Linker(engine)
        self.linker.add_wasip2()
        self.funcs = HostFuncs(lambda fn, e: ctx.report_bug(ctx.name, fn, e))
        if ctx.observer is not None:  # the recorder or a replay sees every host call
            self.funcs.tap = ctx.observer.tap
            self.linker.allow_shadowing = True  # wasi_observed replaces WASI's clocks
        with self.linker.root() as root:
            for module in INTERFACES:
                self.funcs.interface = module.__name__.rsplit(".", 1)[-1]
                with root.add_instance(module.INTERFACE) as inst:
                    module.define(self.funcs, inst, ctx)
            if ctx.observer is not None:
                wasi_observed.define(self.funcs, root)
        if ctx.links is not None:
            ctx.links.define(self.linker)


class GuestFunc:
    """A component export called with fixed codecs (no per-call type walk)."""

    def __init__(self, func: Func, sig: Signature):
        self._func = func
        self._params = sig.params
        self._result = sig.result
        self._n = len(sig.params)

    def __call__(self, store: Store, *args: Any) -> Any:
        """Call the export; raises `WasmtimeError` on a trap."""
        params = (Val * self._n)()
        lowered = 0
        try:
            for i, (codec, value) in enumerate(zip(self._params, args, strict=True)):
                codec.lower(value, params[i])
                lowered += 1
            out = Val()
            func_call(self._func._func, store._context(), params, self._n,
                      ctypes.byref(out), 1 if self._result is not None else 0)
            return self._result.lift(out) if self._result is not None else None
        finally:
            for i in range(lowered):
                val_delete(params[i])


def lookup_export(store: Store, instance: Any, name: str, sig: Signature) -> GuestFunc | None:
    func = instance.get_func(store, name)
    return None if func is None else GuestFunc(func, sig)


__all__ = ["INIT", "ON_MESSAGE", "Codec", "GuestFunc", "PluginLinker", "lookup_export"]
