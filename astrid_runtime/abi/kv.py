"""`astrid:kernel/kv`: the plugin's own keyspace in the kernel's KV store.

The plugin name is supplied by the kernel, never by the guest, so a plugin
cannot name another's keyspace. Errors: `denied` (no kv grant), `invalid`
(empty or oversized key), `too-large` (value over the plugin's payload
limit), `unavailable` (no store configured, or the store failed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wasmtime.component import LinkerInstance

from astrid_runtime.abi.canon import (
    BOOL,
    BYTES,
    ERROR,
    STRING,
    ListCodec,
    OptionCodec,
    ResultCodec,
)
from astrid_runtime.abi.context import PluginContext
from astrid_runtime.abi.hostfunc import HostFuncs, Signature
from astrid_runtime.abi.outcome import call, error
from astrid_runtime.errors import KernelError, Refusal

INTERFACE = "astrid:kernel/kv@0.1.0"
MAX_KEY_BYTES = 512
LIST_LIMIT = 1000

GET = Signature((STRING,), ResultCodec(OptionCodec(BYTES), ERROR))
SET = Signature((STRING, BYTES), ResultCodec(None, ERROR))
DELETE = Signature((STRING,), ResultCodec(BOOL, ERROR))
LIST = Signature((STRING,), ResultCodec(ListCodec(STRING), ERROR))


def _check_key(key: str, *, prefix: bool = False) -> None:
    if not key and not prefix:
        raise Refusal("invalid", "empty key")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise Refusal("invalid", f"key longer than {MAX_KEY_BYTES} bytes")


def define(funcs: HostFuncs, inst: LinkerInstance, ctx: PluginContext) -> None:
    name = ctx.name

    def guarded(op: Callable[[], Any]) -> object:
        if not ctx.grants.kv:
            return error("denied", "kv not granted")
        if ctx.kv is None:
            return error("unavailable", "no kv store configured")

        def run() -> Any:
            try:
                return op()
            except Refusal:
                raise
            except KernelError as e:  # astrid_runtime.kv.KvError and friends
                raise Refusal("unavailable", f"kv: {e}") from e

        return call(run)

    def get(key: str) -> object:
        def op() -> bytes | None:
            _check_key(key)
            assert ctx.kv is not None
            return ctx.kv.get(name, key)
        return guarded(op)

    def set_(key: str, value: bytes) -> object:
        def op() -> None:
            _check_key(key)
            if len(value) > ctx.limits.max_payload_bytes:
                raise Refusal("too-large", f"value of {len(value)} bytes over the limit of "
                              f"{ctx.limits.max_payload_bytes}")
            assert ctx.kv is not None
            ctx.kv.set(name, key, value)
        return guarded(op)

    def delete(key: str) -> object:
        def op() -> bool:
            _check_key(key)
            assert ctx.kv is not None
            return ctx.kv.delete(name, key)
        return guarded(op)

    def list_(prefix: str) -> object:
        def op() -> list[str]:
            _check_key(prefix, prefix=True)
            assert ctx.kv is not None
            return sorted(ctx.kv.list(name, prefix, LIST_LIMIT))
        return guarded(op)

    funcs.add(inst, "get", GET, get)
    funcs.add(inst, "set", SET, set_)
    funcs.add(inst, "delete", DELETE, delete)
    funcs.add(inst, "list", LIST, list_)
