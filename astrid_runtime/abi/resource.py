"""Codecs the `vfs` and `cap` interfaces need beyond `canon`: host resources,
records, flags and `s64`.

Host resources. A resource value in the C API is a `wasmtime_component_
resource_any_t *`; turning it into our integer `rep` (and back) needs the
calling store's context, which only the host-function callback has
(`HostFuncs.add(..., with_context=True)`). So `ResourceCodec.peek` returns
the raw pointer and the host function calls `rep_of(ctx, ptr)`; to return
a new handle the host function calls `own(ctx, rep, type_id)` and the codec
only stores the resulting pointer. Borrowed arguments stay owned by
wasmtime (dropped after the callback); an `own` we lower is consumed by it.

Layouts (wasmtime 50 C API, component/val.h): a value is 32 bytes, kind
byte at 0, payload at 8; a record is {size_t n; entry *data} with 48-byte
entries {wasm_name_t name (16 bytes); val (32 bytes)}; flags are
{size_t n; wasm_name_t *names}.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence
from typing import Any

from astrid_runtime.abi.canon import (
    _MEM,
    _QQ,
    DLL,
    RECORD_KIND,
    RESOURCE_KIND,
    S64_KIND,
    Codec,
    ResourceAnyPtr,
    c_name,
    new_record,
)

_RESOURCE = RESOURCE_KIND
_RECORD = RECORD_KIND
_S64 = S64_KIND
_q = struct.Struct("<q")
_ENTRY = 48
_ENTRY_VAL = 16
_NAME = 16

# The resource calls with plain pointer arguments (ints), so a host call
# does not build ctypes pointer objects of the exact declared types.
_dll = DLL
_any_to_host = _dll.wasmtime_component_resource_any_to_host
_any_to_host.restype = ctypes.c_void_p
_any_to_host.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
_host_to_any = _dll.wasmtime_component_resource_host_to_any
_host_to_any.restype = ctypes.c_void_p
_host_to_any.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
_host_new = _dll.wasmtime_component_resource_host_new
_host_new.restype = ctypes.c_void_p
_host_new.argtypes = [ctypes.c_bool, ctypes.c_uint32, ctypes.c_uint32]
_host_rep = _dll.wasmtime_component_resource_host_rep
_host_rep.restype = ctypes.c_uint32
_host_rep.argtypes = [ctypes.c_void_p]
_host_type = _dll.wasmtime_component_resource_host_type
_host_type.restype = ctypes.c_uint32
_host_type.argtypes = [ctypes.c_void_p]
_host_delete = _dll.wasmtime_component_resource_host_delete
_host_delete.restype = None
_host_delete.argtypes = [ctypes.c_void_p]
_error_delete = _dll.wasmtime_error_delete
_error_delete.restype = None
_error_delete.argtypes = [ctypes.c_void_p]


class ResourceError(Exception):
    """A resource value that is not ours (cannot happen with a type-checked guest)."""


def rep_of(ctx: int, resource_any: int, type_id: int) -> int:
    """The `rep` of a host resource argument of type `type_id`."""
    host = ctypes.c_void_p()
    err = _any_to_host(ctx, resource_any, ctypes.byref(host))
    if err:
        _error_delete(err)
        raise ResourceError("not a host resource")
    try:
        if _host_type(host) != type_id:
            raise ResourceError("wrong resource type")
        return int(_host_rep(host))
    finally:
        _host_delete(host)


def own(ctx: int, rep: int, type_id: int) -> int:
    """A new owned resource value for `rep`: a `resource_any_t *` the result codec lowers."""
    host = _host_new(True, rep, type_id)
    out = ctypes.c_void_p()
    try:
        err = _host_to_any(ctx, host, ctypes.byref(out))
    finally:
        _host_delete(host)
    if err:
        _error_delete(err)
        raise ResourceError("cannot make a resource value")
    return int(out.value or 0)


class ResourceCodec(Codec):
    """`own<T>` / `borrow<T>`: peek gives the raw pointer, lower stores one from `own`."""

    def peek(self, address: int) -> int:
        return int(struct.unpack_from("<Q", _MEM, address + 8)[0])

    def lower(self, value: int, out: Any) -> None:
        out.kind = _RESOURCE
        out.of.resource = ctypes.cast(value, ResourceAnyPtr)


class S64Codec(Codec):
    def peek(self, address: int) -> int:
        return int(_q.unpack_from(_MEM, address + 8)[0])

    def lower(self, value: int, out: Any) -> None:
        out.kind = _S64
        out.of.s64 = value


class FlagsCodec(Codec):
    """`flags`: the set of names that are on."""

    def peek(self, address: int) -> frozenset[str]:
        n, data = _QQ.unpack_from(_MEM, address + 8)
        names = []
        for i in range(n):
            size, ptr = _QQ.unpack_from(_MEM, data + i * _NAME)
            names.append(_MEM[ptr : ptr + size].tobytes().decode("utf-8"))
        return frozenset(names)


class RecordCodec(Codec):
    """A record, as a tuple of its fields in WIT order."""

    def __init__(self, fields: Sequence[tuple[str, Codec]]):
        self.fields = tuple(fields)

    def peek(self, address: int) -> tuple[Any, ...]:
        _n, data = _QQ.unpack_from(_MEM, address + 8)
        return tuple(codec.peek(data + i * _ENTRY + _ENTRY_VAL)
                     for i, (_, codec) in enumerate(self.fields))

    def lower(self, value: Sequence[Any], out: Any) -> None:
        raw = new_record(len(self.fields))
        for i, ((name, codec), item) in enumerate(zip(self.fields, value, strict=True)):
            entry = raw.data[i]
            entry.name = c_name(name)
            codec.lower(item, entry.val)
        out.kind = _RECORD
        out.of.record = raw


RESOURCE = ResourceCodec()
S64 = S64Codec()
FLAGS = FlagsCodec()

__all__ = ["FLAGS", "RESOURCE", "S64", "FlagsCodec", "RecordCodec", "ResourceCodec",
           "ResourceError", "own", "rep_of"]
