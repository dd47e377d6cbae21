"""Host functions on a component linker, through a raw ctypes callback.

wasmtime-py's `LinkerInstance.add_func` re-reads the function's type on
every call and converts each value through that type; and an exception in
the Python function becomes a trap that poisons the plugin, parked in a
module global that is not thread-safe (FIELD-NOTES). This module registers
the callback itself, with a codec tree fixed at registration, and turns a
bug in a host function into an `internal` error *value* for the guest plus a
report to the kernel — never an exception across the FFI boundary.

A trap is returned only when the guest handed us values we cannot decode,
which a component that passed type-checking cannot do.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wasmtime import WasmtimeError
from wasmtime.component import LinkerInstance

from astrid_runtime.abi.canon import VAL_SIZE, Case, Codec, Err, Val, add_raw_func

#: Called with (function name, exception) when a host function raised.
BugReporter = Callable[[str, BaseException], None]
#: Wraps every host call when set (the recorder, a replay): gets the qualified name
#: (`kv.get`), a thunk running the real function, the lifted arguments and the calling
#: store's context (an int; None for functions added without `with_context`); returns
#: the result value (a replay answers from its recording without running the thunk).
HostTap = Callable[[str, Callable[[], Any], list[Any], int | None], Any]


@dataclass(frozen=True)
class Signature:
    params: tuple[Codec, ...]
    result: Codec | None


def _finalize(_env: int | None) -> None:
    return None


_no_finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_finalize)


_RAW_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t)


def _trap(message: str) -> int:
    ptr = WasmtimeError(message)._consume()
    return ctypes.cast(ptr, ctypes.c_void_p).value or 0


class HostFuncs:
    """Owns the ctypes callbacks of one linker; keep it alive as long as the linker."""

    def __init__(self, report_bug: BugReporter):
        self._report_bug = report_bug
        self._keepalive: list[Any] = []
        #: The interface `add` defines functions of now (`kv`, `vfs`): names the taps see.
        self.interface = ""
        #: See `HostTap`; read at each call, so it may be set after `add`.
        self.tap: HostTap | None = None

    def add(self, instance: LinkerInstance, name: str, sig: Signature,
            impl: Callable[..., Any], *, with_context: bool = False) -> None:
        """Define `name` on `instance`; `impl` gets lifted args, returns the result value.

        With `with_context`, `impl` first gets the raw `wasmtime_context_t *`
        of the calling store (an int): resource arguments and results need it.
        """
        params = sig.params
        result = sig.result
        report = self._report_bug

        lower_at = getattr(result, "lower_at", None)
        from_address = Val.from_address
        funcs = self
        qualified = f"{self.interface}.{name}" if self.interface else name

        def trampoline(_env: int | None, _ctx: int | None, _ty: int | None, args: int | None,
                       nargs: int, results: int | None, _nresults: int) -> int:
            try:
                base = args or 0
                lifted = [codec.peek(base + i * VAL_SIZE) for i, codec in enumerate(params)]
            except Exception as e:  # a malformed call: refuse it as a trap
                return _trap(f"host function {name}: bad arguments: {e}")
            try:
                tap = funcs.tap
                if tap is None:
                    value = impl(_ctx, *lifted) if with_context else impl(*lifted)
                else:
                    value = tap(qualified, (lambda: impl(_ctx, *lifted)) if with_context
                                else (lambda: impl(*lifted)), lifted,
                                _ctx if with_context else None)
            except Exception as e:
                report(name, e)
                value = Err(Case("internal", f"{name}: kernel bug: {type(e).__name__}"))
            if result is None:
                return 0
            try:
                if lower_at is not None:
                    lower_at(value, results or 0)
                else:
                    result.lower(value, from_address(results or 0))
            except Exception as e:
                report(name, e)
                return _trap(f"host function {name}: kernel bug lowering result: {e}")
            return 0

        # Pointers arrive as plain ints (c_void_p): cheaper than ctypes pointer
        # objects, and the values are read in place with from_address.
        raw = _RAW_CALLBACK(trampoline)
        self._keepalive.append(raw)
        add_raw_func(instance.ptr(), name, raw, _no_finalizer)
