"""Python values <-> wasmtime C component values, fast.

wasmtime-py converts every value by walking its type at each call, and a
`list<u8>` element by element through Python (FIELD-NOTES: ~2.3 ms per KiB).
Here each host function and export gets a codec tree built once, and
`list<u8>` takes a bulk path: the C API represents a list as an array of
32-byte `wasmtime_component_val_t` (tag byte at offset 0, payload at 8), so
we build or read that whole array with two strided slice operations on a
bytes buffer and one `memmove` — C speed, no per-byte Python.

Ownership follows wasmtime-py exactly: `lift` consumes (frees) what the C
value owns; `lower` writes a value whose allocations the callee frees.

Python shapes: string=str, list<u8>=bytes, u64=int, bool=bool, enum=str,
option=None|value, tuple=tuple, list<T>=list, result=`Ok`/`Err`,
variant=`Case`.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from astrid_runtime.abi import capi

# The C API names (abi/capi.py, the one user of wasmtime._ffi) that modules
# building on the codecs import from here.
from astrid_runtime.abi.capi import DLL as DLL
from astrid_runtime.abi.capi import RECORD_KIND as RECORD_KIND
from astrid_runtime.abi.capi import RESOURCE_KIND as RESOURCE_KIND
from astrid_runtime.abi.capi import S64_KIND as S64_KIND
from astrid_runtime.abi.capi import VAL_SIZE as VAL_SIZE
from astrid_runtime.abi.capi import FuncCallback as FuncCallback
from astrid_runtime.abi.capi import ResourceAnyPtr as ResourceAnyPtr
from astrid_runtime.abi.capi import Val as Val
from astrid_runtime.abi.capi import add_raw_func as add_raw_func
from astrid_runtime.abi.capi import c_name as c_name
from astrid_runtime.abi.capi import func_call as func_call
from astrid_runtime.abi.capi import new_record as new_record
from astrid_runtime.abi.capi import set_epoch_deadline as set_epoch_deadline
from astrid_runtime.abi.capi import val_delete as val_delete

ValPtr = Any  # ctypes.POINTER(Val); ctypes pointer types do not type-check well

_PAYLOAD = capi.PAYLOAD_OFFSET
_K = capi.KINDS
_U8_TAG = bytes([_K["U8"]])

# The process's address space as one byte view. Reading a C value through
# `struct.unpack_from(_MEM, address)` and slicing `_MEM[a:b]` is plain C with
# no ctypes object per field, which is what makes a host call cost a few µs
# instead of tens. It is exactly as safe as ctypes pointers: only addresses
# the C API handed us are read.
_MEM = memoryview((ctypes.c_char * (1 << 47)).from_address(0)).cast("B")
_QQ = struct.Struct("<QQ")
_Q = struct.Struct("<Q")
_RESULT = _K["RESULT"]

T = TypeVar("T")
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    value: T

    def __reduce__(self) -> tuple[Any, ...]:
        # The recorder pickles every host call's answer; a slotted dataclass's default
        # reduction costs ~4x this (copyreg, __getstate__).
        return (Ok, (self.value,))


@dataclass(frozen=True, slots=True)
class Err(Generic[E]):
    value: E

    def __reduce__(self) -> tuple[Any, ...]:
        return (Err, (self.value,))


#: `ok(())`, shared: building a frozen dataclass per call costs more than the call.
OK_UNIT: Ok[None] = Ok(None)


@dataclass(frozen=True, slots=True)
class Case:
    """A WIT variant value: the case name and its payload (None for no payload)."""

    tag: str
    payload: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (Case, (self.tag, self.payload))


class Codec:
    """Converts one WIT type. Subclasses are stateless after construction."""

    def lift(self, c: Any) -> Any:
        """Read the C value `c` (a `Val`) and free what it owns (results we own)."""
        raise NotImplementedError

    def peek(self, address: int) -> Any:
        """Read the C value at `address` without freeing it (host-function
        arguments: wasmtime owns and drops them after the callback)."""
        raise NotImplementedError

    def lower(self, value: Any, out: Any) -> None:
        raise NotImplementedError


def _new_val(codec: Codec, value: Any) -> ValPtr:
    """A heap-allocated C value (for option/result/variant payloads)."""
    raw = Val()
    codec.lower(value, raw)
    return capi.val_new(raw)


def _free_val(ptr: ValPtr) -> None:
    """Free a heap value whose contents were already consumed by `lift`."""
    ptr.contents.kind = _K["BOOL"]
    ptr.contents.of.boolean = False
    capi.val_free(ptr)


def _text_at(address: int) -> str:
    size, data = _QQ.unpack_from(_MEM, address + 8)
    return _MEM[data : data + size].tobytes().decode("utf-8") if size else ""


class StringCodec(Codec):
    def peek(self, address: int) -> str:
        return _text_at(address)

    def lift(self, c: Any) -> str:
        s = c.of.string
        text = ctypes.string_at(s.data, s.size).decode("utf-8")
        capi.byte_vec_delete(s)
        return text

    def lower(self, value: str, out: Any) -> None:
        out.kind = _K["STRING"]
        out.of.string = capi.c_name(value)


class EnumCodec(Codec):
    def peek(self, address: int) -> str:
        return _text_at(address)

    def lift(self, c: Any) -> str:
        s = c.of.enumeration
        text = ctypes.string_at(s.data, s.size).decode("utf-8")
        capi.byte_vec_delete(s)
        return text

    def lower(self, value: str, out: Any) -> None:
        out.kind = _K["ENUM"]
        out.of.enumeration = capi.c_name(value)


class U64Codec(Codec):
    def peek(self, address: int) -> int:
        return int(_Q.unpack_from(_MEM, address + 8)[0])

    def lift(self, c: Any) -> int:
        return int(c.of.u64)

    def lower(self, value: int, out: Any) -> None:
        out.kind = _K["U64"]
        out.of.u64 = value


class U32Codec(Codec):
    def peek(self, address: int) -> int:
        return int.from_bytes(_MEM[address + 8 : address + 12], "little")

    def lift(self, c: Any) -> int:
        return int(c.of.u32)

    def lower(self, value: int, out: Any) -> None:
        out.kind = _K["U32"]
        out.of.u32 = value


class BoolCodec(Codec):
    def peek(self, address: int) -> bool:
        return _MEM[address + 8] != 0

    def lift(self, c: Any) -> bool:
        return bool(c.of.boolean)

    def lower(self, value: bool, out: Any) -> None:
        out.kind = _K["BOOL"]
        out.of.boolean = value


def bytes_to_vals(data: bytes | bytearray | memoryview) -> bytearray:
    """The C array of `n` U8 values for `data`, as raw bytes (bulk path)."""
    n = len(data)
    buf = bytearray(n * VAL_SIZE)
    buf[0::VAL_SIZE] = _U8_TAG * n
    buf[_PAYLOAD::VAL_SIZE] = data
    return buf


def write_vals(address: int, data: bytes | bytearray | memoryview) -> None:
    """Fill the uninitialised C array at `address` with U8 values for `data`.

    Only the tag byte and the payload byte of each 32-byte value are
    written: for a U8 the C API reads nothing else.
    """
    n = len(data)
    end = address + n * VAL_SIZE
    _MEM[address:end:VAL_SIZE] = _U8_TAG * n
    _MEM[address + _PAYLOAD : end : VAL_SIZE] = data


def vals_to_bytes(address: int, n: int) -> bytes:
    """Read back `n` U8 values at `address` (bulk path)."""
    return ctypes.string_at(address, n * VAL_SIZE)[_PAYLOAD::VAL_SIZE]


class BytesCodec(Codec):
    """`list<u8>` in bulk."""

    def peek(self, address: int) -> bytes:
        n, data = _QQ.unpack_from(_MEM, address + 8)
        return _MEM[data + _PAYLOAD : data + n * VAL_SIZE : VAL_SIZE].tobytes() if n else b""

    def lift(self, c: Any) -> bytes:
        lst = c.of.list
        n = lst.size
        data = vals_to_bytes(ctypes.cast(lst.data, ctypes.c_void_p).value or 0, n) if n else b""
        # Elements are plain u8: freeing the array frees everything.
        capi.list_delete(lst)
        return data

    def lower(self, value: bytes, out: Any) -> None:
        n = len(value)
        raw = capi.new_list(n)
        if n:
            write_vals(ctypes.cast(raw.data, ctypes.c_void_p).value or 0, value)
        out.kind = _K["LIST"]
        out.of.list = raw


class ListCodec(Codec):
    def __init__(self, element: Codec):
        self.element = element

    def peek(self, address: int) -> list[Any]:
        n, data = _QQ.unpack_from(_MEM, address + 8)
        return [self.element.peek(data + i * VAL_SIZE) for i in range(n)]

    def lift(self, c: Any) -> list[Any]:
        lst = c.of.list
        out = []
        for i in range(lst.size):
            item = lst.data[i]
            out.append(self.element.lift(item))
            item.kind = _K["BOOL"]
            item.of.boolean = False
        capi.list_delete(lst)
        return out

    def lower(self, value: list[Any], out: Any) -> None:
        raw = capi.new_list(len(value))
        for i, item in enumerate(value):
            self.element.lower(item, raw.data[i])
        out.kind = _K["LIST"]
        out.of.list = raw


class TupleCodec(Codec):
    def __init__(self, *elements: Codec):
        self.elements = elements

    def peek(self, address: int) -> tuple[Any, ...]:
        _n, data = _QQ.unpack_from(_MEM, address + 8)
        return tuple(c.peek(data + i * VAL_SIZE) for i, c in enumerate(self.elements))

    def lift(self, c: Any) -> tuple[Any, ...]:
        tup = c.of.tuple
        out = []
        for i, codec in enumerate(self.elements):
            item = tup.data[i]
            out.append(codec.lift(item))
            item.kind = _K["BOOL"]
            item.of.boolean = False
        capi.tuple_delete(tup)
        return tuple(out)

    def lower(self, value: tuple[Any, ...], out: Any) -> None:
        raw = capi.new_tuple(len(self.elements))
        for i, (codec, item) in enumerate(zip(self.elements, value, strict=True)):
            codec.lower(item, raw.data[i])
        out.kind = _K["TUPLE"]
        out.of.tuple = raw


class OptionCodec(Codec):
    def __init__(self, payload: Codec):
        self.payload = payload

    def peek(self, address: int) -> Any:
        inner = _Q.unpack_from(_MEM, address + 8)[0]
        return None if inner == 0 else self.payload.peek(inner)

    def lift(self, c: Any) -> Any:
        inner = c.of.option
        if not inner:
            return None
        value = self.payload.lift(inner.contents)
        _free_val(inner)
        return value

    def lower(self, value: Any, out: Any) -> None:
        out.kind = _K["OPTION"]
        out.of.option = None if value is None else _new_val(self.payload, value)


class ResultCodec(Codec):
    """`result<ok, err>`; a None codec stands for `_`."""

    def __init__(self, ok: Codec | None, err: Codec | None):
        self.ok = ok
        self.err = err

    def lift(self, c: Any) -> Ok[Any] | Err[Any]:
        res = c.of.result
        codec = self.ok if res.is_ok else self.err
        value = None
        if codec is not None and res.val:
            value = codec.lift(res.val.contents)
            _free_val(res.val)
        return Ok(value) if res.is_ok else Err(value)

    def lower(self, value: Ok[Any] | Err[Any], out: Any) -> None:
        is_ok = type(value) is Ok
        codec = self.ok if is_ok else self.err
        out.kind = _RESULT
        res = out.of.result
        res.is_ok = is_ok
        res.val = None if codec is None else _new_val(codec, value.value)

    def lower_at(self, value: Ok[Any] | Err[Any], address: int) -> None:
        """`lower` into the C value at `address`; `ok(())` without ctypes objects."""
        if self.ok is None and type(value) is Ok:
            _MEM[address] = _RESULT
            _MEM[address + 8] = 1
            _Q.pack_into(_MEM, address + 16, 0)
        else:
            self.lower(value, Val.from_address(address))


class VariantCodec(Codec):
    """A variant whose cases all carry the same payload type (or none)."""

    def __init__(self, cases: dict[str, Codec | None]):
        self.cases = cases

    def lift(self, c: Any) -> Case:
        var = c.of.variant
        d = var.discriminant
        tag = ctypes.string_at(d.data, d.size).decode("utf-8")
        capi.byte_vec_delete(d)
        codec = self.cases[tag]
        payload = None
        if codec is not None and var.val:
            payload = codec.lift(var.val.contents)
            _free_val(var.val)
        return Case(tag, payload)

    def lower(self, value: Case, out: Any) -> None:
        codec = self.cases[value.tag]
        out.kind = _K["VARIANT"]
        out.of.variant.discriminant = capi.c_name(value.tag)
        out.of.variant.val = None if codec is None else _new_val(codec, value.payload)


class DropCodec(Codec):
    """Accepts any argument and frees it unread (for calls answered without it)."""

    def lift(self, c: Any) -> None:
        capi.val_delete(c)

    def peek(self, address: int) -> None:
        return None


STRING = StringCodec()
DROP = DropCodec()
BYTES = BytesCodec()
U64 = U64Codec()
U32 = U32Codec()
BOOL = BoolCodec()
ENUM = EnumCodec()

#: `astrid:kernel/types.error`: every case carries a message string.
ERROR_CASES = (
    "denied", "not-found", "invalid", "too-large", "rate-limited", "closed", "io",
    "conflict", "unavailable", "internal",
)
ERROR = VariantCodec(dict.fromkeys(ERROR_CASES, STRING))
