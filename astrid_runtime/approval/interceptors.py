"""WASM interceptors: `astrid:kernel/interceptor` components as the pipeline's stage 2.

    # policy.toml -- run in this order, before the policy
    [[interceptor]]
    name = "secret-filter"        # a component pinned in plugins.lock
    [[interceptor]]
    name = "path-guard"
    config = "deny fs.* workspace/.git/*"   # optional; else its plugin.toml's config

An interceptor exports `init(config)` and `check(plugin, kind, resource,
details) -> verdict` (allow | deny(reason) | ask(reason)) and imports
nothing (astrid_runtime/wit/interceptor/interceptor.wit). Each runs in its
own Store with tight limits -- fuel and time capped at `MAX_FUEL` and
`MAX_TIMEOUT_MS` whatever its pin says, memory at `MAX_MEMORY` -- and
**fails closed**: a trap, running out of fuel or time, an `init` error, or
a component that is not pinned, does not verify or is not an interceptor
denies every request it would have checked, with the reason. A trapped
instance is thrown away and rebuilt for the next check; nothing else (no
plugin, not the kernel) notices.

`check` runs in the thread of the plugin whose `cap.request` it checks; a
Store must not be entered from two threads, so each interceptor checks
one action at a time (a lock). Blocking; compile with `load_interceptors`
in a worker thread.
"""

from __future__ import annotations

import ctypes
import math
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasmtime import Store, WasmtimeError
from wasmtime.component import Component, Func, Linker

from astrid_runtime.abi.canon import (
    _K,
    STRING,
    VAL_SIZE,
    Case,
    Err,
    Val,
    VariantCodec,
    func_call,
)
from astrid_runtime.abi.world import INIT, lookup_export
from astrid_runtime.approval.pipeline import Action
from astrid_runtime.approval.policy import InterceptorRule
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import KernelError
from astrid_runtime.lockfile import load_lockfile, read_verified
from astrid_runtime.sandbox import trap_reason

#: The tightest limits any interceptor runs under (a pin may ask for less).
MAX_FUEL = 5_000_000
MAX_TIMEOUT_MS = 100
MAX_MEMORY = 16 * 1024 * 1024

VERDICT = VariantCodec({"allow": None, "deny": STRING, "ask": STRING})

# -- the check call, lowered by address ------------------------------------------
#
# `check` is on every capability request's path, so its arguments are laid
# out in memory this module owns, with no C call per value: one zeroed array
# of C values (the four parameters, then the details' tuples, then each
# tuple's two strings) filled by `struct.pack_into`, every string's bytes
# pointing into one Python `bytes` that stays referenced through the call.
# `wasmtime_component_func_call` only reads its arguments (the C API copies
# them into Rust values: crates/c-api/src/component/func.rs), so nothing here
# is handed to wasmtime to free, and no `val_delete` runs on them. Measured:
# 7 `wasm_byte_vec_new` + 3 header calls + 4 deletes cost ~12 of a check's
# ~26 us; this layout ~3 us (scripts/bench/kernel.py --interceptors).
_STRING = _K["STRING"]
_LIST = _K["LIST"]
_TUPLE = _K["TUPLE"]
_PAYLOAD = Val.of.offset
#: One C value: its kind byte, then a (size, pointer) pair (string, list, tuple).
_VALUE = struct.Struct(f"<B{_PAYLOAD - 1}xQQ")
assert _VALUE.size <= VAL_SIZE


def _lower(action: Action) -> tuple[ctypes.Array[Any], bytes]:
    """The C values of `check`'s four parameters, first in the returned array.

    The array and the bytes must both outlive the call (the array's strings
    point into the bytes)."""
    texts = [action.plugin, action.kind, action.resource]
    for key, value in action.details:
        texts += (key, value)
    encoded = [t.encode("utf-8") for t in texts]
    blob = b"".join(encoded)
    n = len(action.details)
    values = (Val * (4 + 3 * n))()
    base = ctypes.addressof(values)
    data = ctypes.cast(ctypes.c_char_p(blob), ctypes.c_void_p).value or 0
    string_at = [base, base + VAL_SIZE, base + 2 * VAL_SIZE]  # where each text's value goes
    tuples = base + 4 * VAL_SIZE
    pairs = tuples + n * VAL_SIZE
    _VALUE.pack_into(values, 3 * VAL_SIZE, _LIST, n, tuples)
    for i in range(n):
        pair = pairs + 2 * i * VAL_SIZE
        _VALUE.pack_into(values, (4 + i) * VAL_SIZE, _TUPLE, 2, pair)
        string_at += (pair, pair + VAL_SIZE)
    offset = 0
    for address, raw in zip(string_at, encoded, strict=True):
        _VALUE.pack_into(values, address - base, _STRING, len(raw), data + offset)
        offset += len(raw)
    return values, blob


class CheckCall:
    """`check(plugin, kind, resource, details) -> verdict` on one instance's export."""

    def __init__(self, func: Func):
        self._func = func

    def __call__(self, store: Store, action: Action) -> Case:
        """Raises `WasmtimeError` on a trap."""
        params, blob = _lower(action)
        out = Val()
        func_call(self._func._func, store._context(), params, 4, ctypes.byref(out), 1)
        verdict: Case = VERDICT.lift(out)
        del blob  # referenced until here: `params`' strings point into it
        return verdict


@dataclass(frozen=True)
class Limits:
    fuel: int
    timeout_ms: int
    memory_bytes: int


class InterceptorError(KernelError):
    """An interceptor that cannot run (init refused, not an interceptor)."""


class WasmInterceptor:
    """One interceptor component; the pipeline's `Stage`. Thread-safe (serialised)."""

    def __init__(self, name: str, engine: KernelEngine, component: Component, config: str,
                 limits: Limits):
        self.name = name
        self._engine = engine
        self._component = component
        self._config = config
        self._limits = limits
        self._linker = Linker(engine.engine)  # nothing to import: no host functions at all
        self._lock = threading.Lock()
        self._live: tuple[Store, CheckCall] | None = None
        self.checks = 0
        self.failures = 0
        self.last_error: str | None = None

    def _arm(self, store: Store) -> None:
        if self._engine.settings.consume_fuel:
            store.set_fuel(self._limits.fuel)
        store.set_epoch_deadline(math.ceil(self._limits.timeout_ms
                                           / self._engine.epoch_tick_ms) + 1)

    def _start(self) -> tuple[Store, CheckCall]:
        store = Store(self._engine.engine)
        store.set_limits(memory_size=self._limits.memory_bytes)
        self._arm(store)
        try:
            instance = self._linker.instantiate(store, self._component)
        except WasmtimeError as e:
            raise InterceptorError(f"cannot instantiate: {trap_reason(e)}") from e
        init = lookup_export(store, instance, "init", INIT)
        check = instance.get_func(store, "check")
        if init is None or check is None:
            raise InterceptorError("not an astrid:kernel/interceptor component")
        result = init(store, self._config)
        if isinstance(result, Err):
            raise InterceptorError(f"init refused: {result.value}")
        return store, CheckCall(check)

    def check(self, action: Action) -> tuple[str, str]:
        """(allow | deny | ask, reason); any failure is a deny (fail closed)."""
        with self._lock:
            self.checks += 1
            try:
                if self._live is None:
                    self._live = self._start()
                store, check = self._live
                self._arm(store)
                verdict = check(store, action)
            except (WasmtimeError, InterceptorError) as e:
                self._live = None  # a trap poisons the Store: start afresh next time
                self.failures += 1
                why = trap_reason(e) if isinstance(e, WasmtimeError) else str(e)
                self.last_error = why
                return "deny", f"interceptor {self.name} failed, so the request is denied: {why}"
        return verdict.tag, verdict.payload or ""


class Unavailable:
    """An interceptor that could not be loaded: denies everything (fail closed)."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason

    def check(self, action: Action) -> tuple[str, str]:
        return "deny", f"interceptor {self.name} is unavailable, so the request is denied: " \
                       f"{self.reason}"


def _limits(pinned_fuel: int, pinned_timeout_ms: int, pinned_memory: int) -> Limits:
    return Limits(min(pinned_fuel or MAX_FUEL, MAX_FUEL),
                  min(pinned_timeout_ms or MAX_TIMEOUT_MS, MAX_TIMEOUT_MS),
                  min(pinned_memory or MAX_MEMORY, MAX_MEMORY))


def load_interceptors(rules: tuple[InterceptorRule, ...], lockfile: Path,
                      engine: KernelEngine) -> list[WasmInterceptor | Unavailable]:
    """Each configured interceptor, verified against its pin and compiled, in order.

    One that cannot be loaded becomes an `Unavailable` stage: it denies,
    it is never skipped. Blocking (hashing, compiling).
    """
    if not rules:
        return []
    stages: list[WasmInterceptor | Unavailable] = []
    try:
        lock = load_lockfile(lockfile)
    except KernelError as e:
        return [Unavailable(r.name, str(e)) for r in rules]
    for rule in rules:
        entry = lock.get(rule.name)
        if entry is None:
            stages.append(Unavailable(rule.name, f"not pinned in {lockfile}"))
            continue
        try:
            wasm = read_verified(entry)
            component = engine.compile(wasm, entry.blake3).component
            exports = component.type.exports(engine.engine)
            if "check" not in exports or "init" not in exports:
                raise InterceptorError("not an astrid:kernel/interceptor component "
                                       "(exports init and check)")
            config = entry.config if rule.config is None else rule.config
        except KernelError as e:
            stages.append(Unavailable(rule.name, str(e)))
            continue
        limits = _limits(entry.limits.fuel_per_call, entry.limits.call_timeout_ms,
                         entry.limits.memory_bytes)
        stages.append(WasmInterceptor(rule.name, engine, component, config, limits))
    return stages


__all__ = [
    "MAX_FUEL",
    "MAX_MEMORY",
    "MAX_TIMEOUT_MS",
    "VERDICT",
    "InterceptorError",
    "Unavailable",
    "WasmInterceptor",
    "load_interceptors",
]
