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
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from wasmtime import _ffi as ffi

Val = ffi.wasmtime_component_val_t
ValPtr = Any  # ctypes.POINTER(Val); ctypes pointer types do not type-check well

VAL_SIZE = ctypes.sizeof(Val)
_PAYLOAD = Val.of.offset
_K = {
    name: getattr(ffi, f"WASMTIME_COMPONENT_{name}").value
    for name in ("BOOL", "U8", "U32", "U64", "STRING", "LIST", "TUPLE", "VARIANT", "ENUM",
                 "OPTION", "RESULT")
}
_U8_TAG = bytes([_K["U8"]])

T = TypeVar("T")
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    value: T


@dataclass(frozen=True, slots=True)
class Err(Generic[E]):
    value: E


@dataclass(frozen=True, slots=True)
class Case:
    """A WIT variant value: the case name and its payload (None for no payload)."""

    tag: str
    payload: Any = None


class Codec:
    """Converts one WIT type. Subclasses are stateless after construction."""

    def lift(self, c: Any) -> Any:
        raise NotImplementedError

    def lower(self, value: Any, ptr: ValPtr) -> None:
        raise NotImplementedError


def _new_val(codec: Codec, value: Any) -> ValPtr:
    """A heap-allocated C value (for option/result/variant payloads)."""
    raw = Val()
    codec.lower(value, ctypes.pointer(raw))
    return ffi.wasmtime_component_val_new(ctypes.byref(raw))


def _free_val(ptr: ValPtr) -> None:
    """Free a heap value whose contents were already consumed by `lift`."""
    ptr.contents.kind = _K["BOOL"]
    ptr.contents.of.boolean = False
    ffi.wasmtime_component_val_free(ptr)


class StringCodec(Codec):
    def lift(self, c: Any) -> str:
        s = c.of.string
        text = ctypes.string_at(s.data, s.size).decode("utf-8")
        ffi.wasm_byte_vec_delete(ctypes.byref(s))
        return text

    def lower(self, value: str, ptr: ValPtr) -> None:
        ptr.contents.kind = _K["STRING"]
        ptr.contents.of.string = ffi.str_to_capi(value)


class EnumCodec(Codec):
    def lift(self, c: Any) -> str:
        s = c.of.enumeration
        text = ctypes.string_at(s.data, s.size).decode("utf-8")
        ffi.wasm_byte_vec_delete(ctypes.byref(s))
        return text

    def lower(self, value: str, ptr: ValPtr) -> None:
        ptr.contents.kind = _K["ENUM"]
        ptr.contents.of.enumeration = ffi.str_to_capi(value)


class U64Codec(Codec):
    def lift(self, c: Any) -> int:
        return int(c.of.u64)

    def lower(self, value: int, ptr: ValPtr) -> None:
        ptr.contents.kind = _K["U64"]
        ptr.contents.of.u64 = value


class U32Codec(Codec):
    def lift(self, c: Any) -> int:
        return int(c.of.u32)

    def lower(self, value: int, ptr: ValPtr) -> None:
        ptr.contents.kind = _K["U32"]
        ptr.contents.of.u32 = value


class BoolCodec(Codec):
    def lift(self, c: Any) -> bool:
        return bool(c.of.boolean)

    def lower(self, value: bool, ptr: ValPtr) -> None:
        ptr.contents.kind = _K["BOOL"]
        ptr.contents.of.boolean = value


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
    view = memoryview((ctypes.c_char * (n * VAL_SIZE)).from_address(address)).cast("B")
    view[0::VAL_SIZE] = _U8_TAG * n
    view[_PAYLOAD::VAL_SIZE] = data


def vals_to_bytes(address: int, n: int) -> bytes:
    """Read back `n` U8 values at `address` (bulk path)."""
    return ctypes.string_at(address, n * VAL_SIZE)[_PAYLOAD::VAL_SIZE]


class BytesCodec(Codec):
    """`list<u8>` in bulk."""

    def lift(self, c: Any) -> bytes:
        lst = c.of.list
        n = lst.size
        data = vals_to_bytes(ctypes.cast(lst.data, ctypes.c_void_p).value or 0, n) if n else b""
        # Elements are plain u8: freeing the array frees everything.
        ffi.wasmtime_component_vallist_delete(ctypes.byref(lst))
        return data

    def lower(self, value: bytes, ptr: ValPtr) -> None:
        raw = ffi.wasmtime_component_vallist_t()
        n = len(value)
        ffi.wasmtime_component_vallist_new_uninit(raw, n)
        if n:
            write_vals(ctypes.cast(raw.data, ctypes.c_void_p).value or 0, value)
        ptr.contents.kind = _K["LIST"]
        ptr.contents.of.list = raw


class ListCodec(Codec):
    def __init__(self, element: Codec):
        self.element = element

    def lift(self, c: Any) -> list[Any]:
        lst = c.of.list
        out = []
        for i in range(lst.size):
            item = lst.data[i]
            out.append(self.element.lift(item))
            item.kind = _K["BOOL"]
            item.of.boolean = False
        ffi.wasmtime_component_vallist_delete(ctypes.byref(lst))
        return out

    def lower(self, value: list[Any], ptr: ValPtr) -> None:
        raw = ffi.wasmtime_component_vallist_t()
        ffi.wasmtime_component_vallist_new_uninit(raw, len(value))
        for i, item in enumerate(value):
            self.element.lower(item, ctypes.pointer(raw.data[i]))
        ptr.contents.kind = _K["LIST"]
        ptr.contents.of.list = raw


class TupleCodec(Codec):
    def __init__(self, *elements: Codec):
        self.elements = elements

    def lift(self, c: Any) -> tuple[Any, ...]:
        tup = c.of.tuple
        out = []
        for i, codec in enumerate(self.elements):
            item = tup.data[i]
            out.append(codec.lift(item))
            item.kind = _K["BOOL"]
            item.of.boolean = False
        ffi.wasmtime_component_valtuple_delete(ctypes.byref(tup))
        return tuple(out)

    def lower(self, value: tuple[Any, ...], ptr: ValPtr) -> None:
        raw = ffi.wasmtime_component_valtuple_t()
        ffi.wasmtime_component_valtuple_new_uninit(raw, len(self.elements))
        for i, (codec, item) in enumerate(zip(self.elements, value, strict=True)):
            codec.lower(item, ctypes.pointer(raw.data[i]))
        ptr.contents.kind = _K["TUPLE"]
        ptr.contents.of.tuple = raw


class OptionCodec(Codec):
    def __init__(self, payload: Codec):
        self.payload = payload

    def lift(self, c: Any) -> Any:
        inner = c.of.option
        if not inner:
            return None
        value = self.payload.lift(inner.contents)
        _free_val(inner)
        return value

    def lower(self, value: Any, ptr: ValPtr) -> None:
        ptr.contents.kind = _K["OPTION"]
        ptr.contents.of.option = None if value is None else _new_val(self.payload, value)


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

    def lower(self, value: Ok[Any] | Err[Any], ptr: ValPtr) -> None:
        is_ok = isinstance(value, Ok)
        codec = self.ok if is_ok else self.err
        ptr.contents.kind = _K["RESULT"]
        ptr.contents.of.result.is_ok = is_ok
        ptr.contents.of.result.val = None if codec is None else _new_val(codec, value.value)


class VariantCodec(Codec):
    """A variant whose cases all carry the same payload type (or none)."""

    def __init__(self, cases: dict[str, Codec | None]):
        self.cases = cases

    def lift(self, c: Any) -> Case:
        var = c.of.variant
        d = var.discriminant
        tag = ctypes.string_at(d.data, d.size).decode("utf-8")
        ffi.wasm_byte_vec_delete(ctypes.byref(d))
        codec = self.cases[tag]
        payload = None
        if codec is not None and var.val:
            payload = codec.lift(var.val.contents)
            _free_val(var.val)
        return Case(tag, payload)

    def lower(self, value: Case, ptr: ValPtr) -> None:
        codec = self.cases[value.tag]
        ptr.contents.kind = _K["VARIANT"]
        ptr.contents.of.variant.discriminant = ffi.str_to_capi(value.tag)
        ptr.contents.of.variant.val = None if codec is None else _new_val(codec, value.payload)


class DropCodec(Codec):
    """Accepts any argument and frees it unread (for calls answered without it)."""

    def lift(self, c: Any) -> None:
        ffi.wasmtime_component_val_delete(ctypes.byref(c))


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
