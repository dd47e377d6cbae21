"""The kernel's one door to wasmtime's C API below wasmtime-py's public surface.

`wasmtime._ffi` is wasmtime-py's private ctypes binding: it changes between
releases. This module is its only importer (tests/runtime/test_ffi_boundary.py
keeps it so); everything else calls the names below, so a wasmtime upgrade is
checked in one file. What it knows: the C layout of component values
(`wasmtime_component_val_t`, 32 bytes, tag at 0 and payload at 8) and which
C functions allocate and free them. What it does not: WIT types (abi/canon.py
builds codecs on top of these names).
"""

from __future__ import annotations

import ctypes
from typing import Any

from wasmtime import WasmtimeError
from wasmtime import _ffi as ffi

#: `wasmtime_component_val_t`, the C component value.
Val = ffi.wasmtime_component_val_t
VAL_SIZE = ctypes.sizeof(Val)
#: Offset of a value's payload (after the tag byte and padding).
PAYLOAD_OFFSET: int = Val.of.offset
#: The C value kinds by WIT name (BOOL, U8, ..., RESULT, RECORD, RESOURCE, S64).
KINDS: dict[str, int] = {
    name: getattr(ffi, f"WASMTIME_COMPONENT_{name}").value
    for name in ("BOOL", "U8", "U32", "U64", "S64", "STRING", "LIST", "TUPLE", "VARIANT",
                 "ENUM", "OPTION", "RESULT", "RECORD", "RESOURCE")
}
#: Where nested values sit (abi/link_answer.py walks them): a record entry is a name
#: then an inline value; a variant's and a result's payload is a value pointer.
RECORD_ENTRY_SIZE = ctypes.sizeof(ffi.wasmtime_component_valrecord_entry_t)
RECORD_ENTRY_VAL: int = ffi.wasmtime_component_valrecord_entry_t.val.offset
VARIANT_VAL: int = getattr(ffi.wasmtime_component_valvariant_t, "val").offset  # noqa: B009
RESULT_VAL: int = getattr(ffi.wasmtime_component_valresult_t, "val").offset  # noqa: B009
RECORD_KIND = KINDS["RECORD"]
RESOURCE_KIND = KINDS["RESOURCE"]
S64_KIND = KINDS["S64"]
#: `wasmtime_component_func_callback_t`: the C type of a raw host-function callback.
FuncCallback = ffi.wasmtime_component_func_callback_t
#: A `wasmtime_component_resource_any_t *`, as resource values hold it.
ResourceAnyPtr = ctypes.POINTER(ffi.wasmtime_component_resource_any_t)
#: The loaded wasmtime C library (for functions wasmtime-py does not bind).
DLL = ffi.dll

# -- values ---------------------------------------------------------------------


def val_new(raw: Any) -> Any:
    """A heap copy of the C value `raw` (`wasmtime_component_val_new`); takes its contents."""
    return ffi.wasmtime_component_val_new(ctypes.byref(raw))


def val_free(ptr: Any) -> None:
    """Free a heap value (`wasmtime_component_val_free`) and what it still owns."""
    ffi.wasmtime_component_val_free(ptr)


def val_delete(val: Any) -> None:
    """Free what a C value owns (`wasmtime_component_val_delete`)."""
    ffi.wasmtime_component_val_delete(ctypes.byref(val))


def c_name(name: str) -> Any:
    """A `wasm_name_t` holding `name` (owned by the value it is stored in)."""
    return ffi.str_to_capi(name)


def byte_vec_delete(vec: Any) -> None:
    """Free a `wasm_byte_vec_t` (a string, enum or discriminant payload)."""
    ffi.wasm_byte_vec_delete(ctypes.byref(vec))


def new_list(n: int) -> Any:
    """An uninitialised `wasmtime_component_vallist_t` of `n` values."""
    raw = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(raw, n)
    return raw


def list_delete(lst: Any) -> None:
    ffi.wasmtime_component_vallist_delete(ctypes.byref(lst))


def new_tuple(n: int) -> Any:
    """An uninitialised `wasmtime_component_valtuple_t` of `n` values."""
    raw = ffi.wasmtime_component_valtuple_t()
    ffi.wasmtime_component_valtuple_new_uninit(raw, n)
    return raw


def tuple_delete(tup: Any) -> None:
    ffi.wasmtime_component_valtuple_delete(ctypes.byref(tup))


def new_record(fields: int) -> Any:
    """An uninitialised `wasmtime_component_valrecord_t` of `fields` entries."""
    raw = ffi.wasmtime_component_valrecord_t()
    ffi.wasmtime_component_valrecord_new_uninit(raw, fields)
    return raw


def record_delete(rec: Any) -> None:
    """Free a record's entries (names and whatever values they still own)."""
    ffi.wasmtime_component_valrecord_delete(ctypes.byref(rec))


# -- calls, stores, linkers ------------------------------------------------------


def error_from(address: int) -> WasmtimeError:
    """The `WasmtimeError` for a `wasmtime_error_t *` given as an address (takes it)."""
    return WasmtimeError._from_ptr(ctypes.cast(address, ctypes.POINTER(ffi.wasmtime_error_t)))


def func_call(func: Any, store_context: Any, params: Any, n_params: int, out: Any,
              n_results: int) -> None:
    """`wasmtime_component_func_call`; raises `WasmtimeError` on a trap."""
    err = ffi.wasmtime_component_func_call(ctypes.byref(func), store_context, params,
                                           n_params, out, n_results)
    if err:
        raise WasmtimeError._from_ptr(err)


def _bind(name: str, argtypes: list[Any], restype: Any) -> Any:
    fn = ffi.dll[name]
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


_VP = ctypes.c_void_p
#: `wasmtime_component_func_call(func *, context *, args, nargs, results, nresults)` with
#: plain addresses: returns a `wasmtime_error_t *` address (0 when it returned).
#: For hot paths (a link call) where building ctypes objects costs more than the call.
func_call_raw = _bind("wasmtime_component_func_call",
                      [_VP, _VP, _VP, ctypes.c_size_t, _VP, ctypes.c_size_t], _VP)
#: `wasmtime_context_set_fuel(context *, fuel)`: returns an error address or 0.
set_fuel_raw = _bind("wasmtime_context_set_fuel", [_VP, ctypes.c_uint64], _VP)
#: `wasmtime_context_set_epoch_deadline(context *, ticks)`.
set_epoch_deadline_raw = _bind("wasmtime_context_set_epoch_deadline",
                               [_VP, ctypes.c_uint64], None)


def set_epoch_deadline(store_context: int, ticks: int) -> None:
    """Set the epoch deadline of the store whose raw `wasmtime_context_t *` is given."""
    set_epoch_deadline_raw(store_context, ticks)


def func_address(func: Any) -> int:
    """The address of a wasmtime-py component `Func`'s C handle (for `func_call_raw`)."""
    return ctypes.addressof(func._func)


def store_context_address(store: Any) -> int:
    """The `wasmtime_context_t *` of a wasmtime-py `Store`, as an address."""
    return ctypes.cast(store._context(), ctypes.c_void_p).value or 0


def add_raw_func(instance_ptr: Any, name: str, callback: Any, finalizer: Any) -> None:
    """Define `name` on a linker instance with a raw C callback; raises `WasmtimeError`."""
    encoded = name.encode("utf-8")
    err = ffi.wasmtime_component_linker_instance_add_func(
        instance_ptr, ctypes.create_string_buffer(encoded), len(encoded),
        ctypes.cast(callback, FuncCallback), None, finalizer)
    if err:
        raise WasmtimeError._from_ptr(err)
