"""Component-to-component calls: one plugin's import served by another's export.

wasmtime cannot link two component instances directly, and we would not
want it to: the callee must keep its own Store (own memory, fuel, epoch
deadline) so that its crash is its own. So each imported function of a
linked interface becomes a host function in the caller's linker (a *shim*)
that calls the provider's export in the provider's Store:

    caller guest --(canonical lift: wasmtime)--> shim --(func_call)--> provider guest

The shim does no conversion in Python: wasmtime hands it the arguments as
C component values, and those same values are the parameters of the
provider's export; the provider's result is written straight into the
caller's result slot. The boot check (`check_link_types`, link_types.py) makes sure the
two sides have the same function types, and that every function returns
`result<_, string>`, so that the shim can answer any failure as
`err("link ...: why")` -- never a trap in the caller:

- the provider trapped (unreachable, fuel, deadline, memory limit): its
  Store is thrown away, the crash is counted and logged, and the next call
  builds a new instance (a restart); `max_crashes` within `crash_window_s`
  disables it until the kernel restarts or it is swapped;
- the caller's grant does not name the interface: `denied`;
- the provider is disabled or cannot be instantiated;
- its answer is over the caller's cap (half the caller's memory limit): wasmtime
  would copy it into the caller's memory, and a caller that cannot hold it
  traps (link_answer.py).

Threads: shims run in the caller's guest thread. A provider's Store is
entered by one thread at a time (its lock); a call waits for the one in
flight. Locks are taken in link order (importer, then provider) and the
boot refuses cycles, so they cannot deadlock. Hot swap (`swap`) takes the
same lock: a call in flight finishes on the old instance, the next one
runs on the new.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from wasmtime import Store, WasiConfig, WasmtimeError
from wasmtime.component import Component, Linker

from astrid_runtime.abi.canon import STRING, Err, ResultCodec, Val, val_delete
from astrid_runtime.abi.capi import (
    add_raw_func,
    error_from,
    func_address,
    func_call_raw,
    set_epoch_deadline_raw,
    set_fuel_raw,
    store_context_address,
)
from astrid_runtime.abi.hostfunc import _RAW_CALLBACK, _no_finalizer
from astrid_runtime.abi.link_answer import answer_bytes
from astrid_runtime.abi.link_types import HOST_PACKAGES as HOST_PACKAGES
from astrid_runtime.abi.link_types import check_link_types as check_link_types
from astrid_runtime.abi.link_types import link_exports as link_exports
from astrid_runtime.abi.link_types import link_imports as link_imports
from astrid_runtime.abi.link_types import plain as plain
from astrid_runtime.abi.world import INIT, lookup_export
from astrid_runtime.engine import KernelEngine
from astrid_runtime.grants import Limits
from astrid_runtime.links import InterfaceRef, LinkError, grant_covers, parse_interface
from astrid_runtime.logs import KernelLog
from astrid_runtime.sandbox import trap_reason

_ERR = ResultCodec(None, STRING)

# The shim passes the addresses wasmtime gave it straight to func_call_raw, and
# fuel and deadline are set before every call through the cached context pointer:
# through wasmtime-py's Store methods that costs more than the call itself
# (FIELD-NOTES: an export call is 12-20 us).


@dataclass
class _Live:
    store: Store
    context: int  # wasmtime_context_t *
    funcs: dict[tuple[str, str], Any]  # (interface, function) -> wasmtime Func
    instance: Any


class LinkProvider:
    """A plugin serving its exported interfaces to importers, in its own Store.

    Thread-safe: every entry into the Store holds `_lock`.
    """

    def __init__(self, name: str, version: str, engine: KernelEngine, component: Component,
                 config: str, limits: Limits, exports: dict[str, str], log: KernelLog,
                 imports: LinkImports | None = None):
        self.name = name
        self.version = version
        self._engine = engine
        self._component = component
        self._config = config
        self._limits = limits
        #: interface name (no version) -> export name in the component (with version)
        self.exports = exports
        self._log = log
        self._linker = Linker(engine.engine)
        self._linker.add_wasip2()
        # What the provider itself imports from further providers (link order).
        self._imports = imports
        if imports is not None:  # not observed: its own calls are no bus delivery's
            imports.define(self._linker, observed=False)
        self._fuel = ((limits.fuel_per_call or 2**63 - 1) if engine.settings.consume_fuel
                      else 0)
        self._ticks = math.ceil(limits.call_timeout_ms / engine.epoch_tick_ms) + 1
        self._lock = threading.Lock()
        self._live: _Live | None = None
        self._crash_times: deque[float] = deque()
        #: The next start rebuilds after a crash (a restart), not a first start or a swap.
        self._restarting = False
        self.calls = 0
        self.crashes = 0
        self.restarts = 0
        self.swaps = 0
        self.disabled: str | None = None
        self.last_error: str | None = None

    # -- instance ------------------------------------------------------------

    def _arm(self, context: int) -> None:
        """Fuel and epoch deadline for the next entry into the Store at `context`."""
        if self._fuel:
            err = set_fuel_raw(context, self._fuel)
            if err:
                raise error_from(err)
        set_epoch_deadline_raw(context, self._ticks)

    def _start(self) -> _Live:
        store = Store(self._engine.engine)
        store.set_limits(memory_size=self._limits.memory_bytes)
        store.set_wasi(WasiConfig())  # grants no files, env or stdio
        context = store_context_address(store)
        self._arm(context)
        instance = self._linker.instantiate(store, self._component)
        init = lookup_export(store, instance, "init", INIT)
        if init is not None:
            self._arm(context)
            result = init(store, self._config)
            if isinstance(result, Err):
                raise LinkError(f"init refused: {result.value}")
        return _Live(store, context, {}, instance)

    def _func(self, live: _Live, iface: str, fn: str) -> Any:
        key = (iface, fn)
        func = live.funcs.get(key)
        if func is None:
            export = self.exports[iface]
            idx = live.instance.get_export_index(live.store, export)
            fidx = None if idx is None else live.instance.get_export_index(live.store, fn, idx)
            func = None if fidx is None else live.instance.get_func(live.store, fidx)
            if func is None:
                raise LinkError(f"{export} has no function {fn}")
            live.funcs[key] = func
        return func

    def _crashed(self, reason: str) -> None:
        """Count a crash (lock held); disable after `max_crashes` within the window."""
        self._live = None  # a trap poisons the Store: the next call builds a new one
        self._restarting = True
        self.crashes += 1
        self.last_error = reason
        now = time.monotonic()
        self._crash_times.append(now)
        window = self._limits.crash_window_s
        while self._crash_times and now - self._crash_times[0] > window:
            self._crash_times.popleft()
        self._log.event("error", "link.provider_crashed", plugin=self.name, reason=reason,
                        crashes=self.crashes)
        if len(self._crash_times) >= self._limits.max_crashes:
            self.disabled = f"{len(self._crash_times)} crashes within {window:g}s; last: {reason}"
            self._log.event("error", "link.provider_disabled", plugin=self.name,
                            reason=self.disabled)

    # -- calls ---------------------------------------------------------------

    def call(self, iface: str, fn: str, args: int, nargs: int, results: int) -> str | None:
        """Run `iface.fn` with the C values at `args`, its result into `results`.

        None when the provider answered (its own ok or err is in `results`);
        else why not, and `results` is left unwritten.
        """
        with self._lock:
            if self.disabled is not None:
                return f"provider {self.name} is disabled ({self.disabled})"
            self.calls += 1
            try:
                if self._live is None:
                    self.restarts += self._restarting
                    self._restarting = False
                    self._live = self._start()
                live = self._live
                func = self._func(live, iface, fn)
            except WasmtimeError as e:
                reason = f"trapped while starting: {trap_reason(e)}"
                self._crashed(reason)
                return f"provider {self.name} {reason}"
            except LinkError as e:
                self._crashed(str(e))
                return f"provider {self.name}: {e}"
            self._arm(live.context)
            err = func_call_raw(func_address(func), live.context, args, nargs, results, 1)
            if err:
                reason = trap_reason(error_from(err))
                self._crashed(reason)
                return f"provider {self.name} crashed ({reason}); it is restarted"
            return None

    def swap(self, component: Component, version: str, exports: dict[str, str],
             limits: Limits, config: str) -> None:
        """Serve the next calls from `component` (a newly pinned version, its pinned limits
        and config); the call in flight finishes on the old instance. Clears a disabled
        state."""
        with self._lock:
            self._component = component
            self.version = version
            self.exports = exports
            self._limits = limits
            self._config = config
            self._fuel = ((limits.fuel_per_call or 2**63 - 1)
                          if self._engine.settings.consume_fuel else 0)
            self._ticks = math.ceil(limits.call_timeout_ms / self._engine.epoch_tick_ms) + 1
            self._live = None
            self._restarting = False
            self._crash_times.clear()
            self.disabled = None
            self.swaps += 1

    @property
    def call_timeout_ms(self) -> int:
        return self._limits.call_timeout_ms

    def status(self) -> dict[str, Any]:
        state = "disabled" if self.disabled else ("running" if self._live else "idle")
        return {"name": self.name, "version": self.version, "state": state,
                "exports": sorted(self.exports.values()), "calls": self.calls,
                "crashes": self.crashes, "restarts": self.restarts, "swaps": self.swaps,
                "last_error": self.disabled or self.last_error}


@dataclass(frozen=True)
class Shim:
    """One imported interface of one importer: who serves it, or why nobody may."""

    importer: str
    import_name: str  # as the importer's component names it (with version)
    interface: str  # without version: the provider's key
    functions: tuple[str, ...]
    provider: LinkProvider | None
    denied: str | None = None


#: Sees each link call instead of the shim (the recorder, a replay: recorder/linkcalls.py):
#: (shim, function, the shim's own call, args address, results address) -> why it failed
#: (the shim answers err) or None (the result slot is written).
LinkTap = Callable[[Shim, str, Callable[[], "str | None"], int, int], "str | None"]


class LinkImports:
    """The shims of one importer; keeps their ctypes callbacks alive with it."""

    def __init__(self, shims: Iterable[Shim], report_bug: Callable[[str, BaseException], None],
                 answer_cap: int | None = None):
        self.shims = tuple(shims)
        self._report_bug = report_bug
        #: The largest answer (abi/link_answer.py) handed to the importer; None: any.
        self.answer_cap = answer_cap
        self._keepalive: list[Any] = []
        #: Read at each call, so it may be set after `define`.
        self.tap: LinkTap | None = None

    def define(self, linker: Linker, *, observed: bool = True) -> None:
        """Add every shim to `linker` (a plugin's or, not `observed` by `tap`, a
        provider's)."""
        with linker.root() as root:
            for shim in self.shims:
                with root.add_instance(shim.import_name) as inst:
                    for fn in shim.functions:
                        self._add(inst, shim, fn, observed)

    def _add(self, inst: Any, shim: Shim, fn: str, observed: bool) -> None:
        where = f"link {shim.interface}.{fn}"
        provider, denied, report = shim.provider, shim.denied, self._report_bug
        lower_err = _ERR.lower
        from_address = Val.from_address
        imports = self

        cap = self.answer_cap

        def serve(args: int, nargs: int, results: int) -> str | None:
            if denied is not None or provider is None:
                return denied
            why = provider.call(shim.interface, fn, args, nargs, results)
            if why is None and cap is not None and (size := answer_bytes(results)) > cap:
                val_delete(Val.from_address(results))  # the answer never reaches the caller
                return (f"the answer of {size} bytes is over plugin {shim.importer}'s cap of "
                        f"{cap} (half its memory limit)")
            return why

        def trampoline(_env: int | None, _ctx: int | None, _ty: int | None, args: int | None,
                       nargs: int, results: int | None, _nresults: int) -> int:
            try:
                tap, at, out = imports.tap if observed else None, args or 0, results or 0
                why = (serve(at, nargs, out) if tap is None
                       else tap(shim, fn, lambda: serve(at, nargs, out), at, out))
                if why is not None:
                    lower_err(Err(f"{where}: {why}"), from_address(results or 0))
            except Exception as e:  # never raise across the FFI boundary
                report(where, e)
                lower_err(Err(f"{where}: kernel bug: {type(e).__name__}"),
                          from_address(results or 0))
            return 0

        raw = _RAW_CALLBACK(trampoline)
        self._keepalive.append(raw)
        add_raw_func(inst.ptr(), fn, raw, _no_finalizer)


def plan_shims(importer: str, component: Component, engine: KernelEngine,
               declared: tuple[InterfaceRef, ...], granted: tuple[str, ...],
               providers: dict[str, LinkProvider],
               provider_types: dict[str, dict[str, Any]]) -> list[Shim]:
    """The shims for `importer`'s link imports; `LinkError` (one line) if one cannot be made.

    `providers` and `provider_types` are keyed by interface name (no version).
    """
    shims: list[Shim] = []
    for import_name, wanted in sorted(link_imports(component, engine).items()):
        try:
            ref = parse_interface(import_name)
        except LinkError:
            raise LinkError(f"plugin {importer} imports {import_name}, which is not a "
                            "linkable interface") from None
        if ref not in declared:
            raise LinkError(f"plugin {importer}'s component imports {import_name}, which its "
                            "plugin.toml does not declare in `imports`")
        provider = providers.get(ref.name)
        if provider is None:  # resolve() refuses this first; kept for direct callers
            raise LinkError(f"plugin {importer} imports {import_name}: no provider")
        problem = check_link_types(import_name, wanted, provider_types[ref.name])
        if problem is not None:
            raise LinkError(f"plugin {importer} cannot link to plugin {provider.name}: {problem}")
        denied = None
        if not any(grant_covers(g, ref) for g in granted):
            denied = f"denied: plugin {importer}'s grant does not name {ref}"
        shims.append(Shim(importer, import_name, ref.name, tuple(sorted(wanted)),
                          None if denied else provider, denied))
    return shims
