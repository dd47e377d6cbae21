"""How many bytes a link answer will take in the caller's memory, before wasmtime
lowers it there.

A provider's answer is written into the caller's result slot as a C component
value, and wasmtime copies it into the caller's memory (through the caller's
`cabi_realloc`) after the shim returns. An answer the caller's memory cannot
hold traps the caller, a crash its provider caused. So the shim measures the
answer first (`answer_bytes`) and refuses one over the caller's cap (half its
memory limit) as an err, without the caller ever seeing it.

The count is the data a guest must allocate: string bytes, one byte per
scalar list element, the nested values of lists, tuples, records, variants,
options and results. It reads the C values in place (layouts: abi/capi.py).
"""

from __future__ import annotations

import ctypes
import struct

from astrid_runtime.abi.capi import (
    KINDS,
    PAYLOAD_OFFSET,
    RECORD_ENTRY_SIZE,
    RECORD_ENTRY_VAL,
    RESULT_VAL,
    VAL_SIZE,
    VARIANT_VAL,
)

_STRING, _ENUM = KINDS["STRING"], KINDS["ENUM"]
_LIST, _TUPLE, _RECORD = KINDS["LIST"], KINDS["TUPLE"], KINDS["RECORD"]
_VARIANT, _OPTION, _RESULT = KINDS["VARIANT"], KINDS["OPTION"], KINDS["RESULT"]
#: Kinds whose values hold other values or bytes elsewhere; the rest are scalars.
_COMPOUND = {_STRING, _ENUM, _LIST, _TUPLE, _RECORD, _VARIANT, _OPTION, _RESULT}
#: Where, in the payload, the pointer to the one nested value is.
_POINTER_AT = {_VARIANT: VARIANT_VAL, _OPTION: 0, _RESULT: RESULT_VAL}


# Reads through one byte view of the address space, as abi/canon.py does: a
# struct unpack per field instead of a ctypes object (this runs on every link call).
_MEM = memoryview((ctypes.c_char * (1 << 47)).from_address(0)).cast("B")
_Q = struct.Struct("<Q")


def _u64(address: int) -> int:
    value: int = _Q.unpack_from(_MEM, address)[0]
    return value


def answer_bytes(address: int) -> int:
    """Bytes of data the C component value at `address` holds (see the module doc)."""
    kind = _MEM[address]
    payload = address + PAYLOAD_OFFSET
    if kind == _STRING:
        return _u64(payload)
    if kind == _ENUM:  # the case name; lowered as a small integer
        return 1
    if kind in (_LIST, _TUPLE):
        n, data = _u64(payload), _u64(payload + 8)
        if n == 0:
            return 0
        if kind == _LIST and _MEM[data] not in _COMPOUND:
            return n  # one type for every element: scalars, at least a byte each
        return sum(answer_bytes(data + i * VAL_SIZE) for i in range(n))
    if kind == _RECORD:
        n, data = _u64(payload), _u64(payload + 8)
        return sum(answer_bytes(data + i * RECORD_ENTRY_SIZE + RECORD_ENTRY_VAL)
                   for i in range(n))
    inner = _POINTER_AT.get(kind)
    if inner is None:
        return 8  # a scalar
    pointer = _u64(payload + inner)
    return 1 + (answer_bytes(pointer) if pointer else 0)
