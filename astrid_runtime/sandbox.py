"""One plugin instance: its own Store, limits, fuel and epoch deadline.

Invariants:
- One Store per instance; a trap poisons every instance in a Store, so a
  crashed instance is thrown away whole and a new one built.
- A Store is never entered from two threads at once. This class does not
  lock: its single owner (the plugin's supervisor task) makes one call at
  a time, each in a worker thread.
- Limits are set before instantiation: memory via store limits, fuel per
  call, and an epoch deadline per call (with epoch interruption on, the
  default deadline is 0 and instantiation itself would trap).

Every method here blocks (guest code runs); call them through
`trio.to_thread.run_sync`.
"""

from __future__ import annotations

import math
from typing import Any

from wasmtime import Store, WasiConfig, WasmtimeError
from wasmtime.component import Component

from astrid_runtime.abi.canon import Err
from astrid_runtime.abi.hostfunc import Signature
from astrid_runtime.abi.world import INIT, ON_MESSAGE, GuestFunc, PluginLinker, lookup_export
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import CompileError, PluginCrash, PluginError
from astrid_runtime.grants import Limits


def trap_reason(error: WasmtimeError) -> str:
    """A one-line cause for a trap ("interrupt", "all fuel consumed", "unreachable", ...)."""
    text = str(error)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Caused by:" in lines:
        tail = lines[lines.index("Caused by:") + 1 :]
        cause = tail[-1] if tail else lines[0]
        cause = cause.split(":", 1)[1].strip() if cause[:1].isdigit() else cause
    else:
        cause = lines[0] if lines else "trap"
    if "interrupt" in cause:
        return "deadline exceeded (interrupted by the epoch ticker)"
    if "fuel" in cause:
        return "fuel exhausted"
    return cause


class PluginInstance:
    """An instantiated plugin component. Not thread-safe; see the module docstring."""

    def __init__(self, name: str, engine: KernelEngine, component: Component,
                 linker: PluginLinker, limits: Limits):
        self.name = name
        # The linker owns the ctypes callbacks of the host functions: the
        # instance must keep it alive, or a host call jumps into freed memory.
        self._linker = linker
        self._engine = engine
        self._limits = limits
        self.store = Store(engine.engine)
        # Store limits stop memory bombs: memory.grow fails past the limit.
        self.store.set_limits(memory_size=limits.memory_bytes)
        # An empty WasiConfig grants no files, env, args or stdio.
        self.store.set_wasi(WasiConfig())
        self._arm()
        try:
            instance = linker.linker.instantiate(self.store, component)
        except WasmtimeError as e:
            text = str(e)
            if "trap" in text or "interrupt" in text or "fuel" in text:
                raise PluginCrash(name, f"trapped while instantiating: {trap_reason(e)}") from e
            raise CompileError(f"plugin {name}: cannot link: {text.splitlines()[0]}") from e
        init = lookup_export(self.store, instance, "init", INIT)
        on_message = lookup_export(self.store, instance, "on-message", ON_MESSAGE)
        if init is None or on_message is None:
            raise CompileError(f"plugin {name}: not an astrid:kernel/plugin component "
                               "(exports init and on-message are missing)")
        self._init: GuestFunc = init
        self._on_message: GuestFunc = on_message
        self._instance = instance
        self._exports: dict[tuple[str, str], GuestFunc | None] = {}

    def _arm(self) -> None:
        """Fuel and epoch deadline for the next guest call."""
        if self._engine.settings.consume_fuel:
            self.store.set_fuel(self._limits.fuel_per_call or 2**63 - 1)
        ticks = math.ceil(self._limits.call_timeout_ms / self._engine.epoch_tick_ms) + 1
        self.store.set_epoch_deadline(ticks)

    def _call(self, func: GuestFunc, *args: object) -> None:
        self._arm()
        try:
            result = func(self.store, *args)
        except WasmtimeError as e:
            raise PluginCrash(self.name, trap_reason(e)) from e
        if isinstance(result, Err):
            raise PluginError(f"plugin {self.name}: {result.value}")

    def export(self, interface: str, name: str, sig: Signature) -> GuestFunc | None:
        """Function `name` of the exported `interface` (e.g. a frontend's
        `astrid:kernel/http-handler@0.1.0`), called with `sig`; None if not exported."""
        key = (interface, name)
        if key not in self._exports:
            idx = self._instance.get_export_index(self.store, interface)
            fidx = None if idx is None else self._instance.get_export_index(
                self.store, name, idx)
            func = None if fidx is None else self._instance.get_func(self.store, fidx)
            self._exports[key] = None if func is None else GuestFunc(func, sig)
        return self._exports[key]

    def call(self, func: GuestFunc, *args: object) -> Any:
        """Call an export of this instance under the plugin's fuel and deadline; its
        result. `PluginCrash` on a trap."""
        self._arm()
        try:
            return func(self.store, *args)
        except WasmtimeError as e:
            raise PluginCrash(self.name, trap_reason(e)) from e

    def init(self, config: str) -> None:
        """Call the plugin's `init`; `PluginCrash` on a trap, `PluginError` on `err`."""
        self._call(self._init, config)

    def on_message(self, topic: str, payload: bytes) -> None:
        """Deliver one message; `PluginCrash` on a trap, `PluginError` on `err`."""
        self._call(self._on_message, topic, payload)
