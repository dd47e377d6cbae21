"""Component-link calls as host calls: recorded, and answered from the recording.

A plugin's call into a linked component (abi/links.py) is, for that plugin,
a host call whose answer it observes, like a KV read. The shims pass C
values through without converting them; with an observer (the recorder, a
replay) the importer's `LinkImports.tap` is a `LinkCalls`, which reads the
arguments in place (no copies, nothing freed: wasmtime owns them), lets the
observer see the call as `link INTERFACE.FUNCTION` with those arguments,
and:

- recording: runs the real call (the provider's answer lands in the result
  slot) and hands the observer that answer, read in place, or the `err` the
  shim would answer (`link ...: provider ... crashed`);
- replaying: lowers the answer the observer gives (the recorded one) into
  the result slot; the provider is never called, so a replay needs none.

Values take the recorder's shapes (abi/canon, recorder/values.py): records
and tuples as tuples, variants as `Case`, flags as frozensets. Codecs are
built once per function from the importer's component type.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from wasmtime.component import (
    Component,
    EnumType,
    FlagsType,
    ListType,
    OptionType,
    RecordType,
    ResultType,
    TupleType,
    ValType,
    VariantType,
)

from astrid_runtime.abi.canon import (
    BOOL,
    BYTES,
    ENUM,
    STRING,
    U32,
    U64,
    VAL_SIZE,
    Case,
    Codec,
    Err,
    ListCodec,
    Ok,
    OptionCodec,
    ResultCodec,
    TupleCodec,
    Val,
    VariantCodec,
)
from astrid_runtime.abi.context import CallObserver
from astrid_runtime.abi.links import LinkImports, Shim, link_imports
from astrid_runtime.abi.resource import FLAGS, S64, RecordCodec
from astrid_runtime.engine import KernelEngine
from astrid_runtime.links import parse_interface


def _address(ptr: Any) -> int:
    return ctypes.addressof(ptr.contents) if ptr else 0


class _Result(ResultCodec):
    def peek(self, address: int) -> Ok[Any] | Err[Any]:
        res = Val.from_address(address).of.result
        codec = self.ok if res.is_ok else self.err
        inner = _address(res.val)
        value = codec.peek(inner) if codec is not None and inner else None
        return Ok(value) if res.is_ok else Err(value)


class _Variant(VariantCodec):
    def peek(self, address: int) -> Case:
        var = Val.from_address(address).of.variant
        d = var.discriminant
        tag = ctypes.string_at(d.data, d.size).decode("utf-8")
        codec = self.cases[tag]
        inner = _address(var.val)
        return Case(tag, codec.peek(inner) if codec is not None and inner else None)


class _Scalar(Codec):
    """A scalar the kernel's own interfaces do not use (s8-s32, u8, u16, floats, char):
    through wasmtime-py's converters, which allocate nothing for these."""

    def __init__(self, ty: ValType):
        self.ty = ty

    def peek(self, address: int) -> Any:
        return self.ty.convert_from_c(Val.from_address(address))

    def lower(self, value: Any, out: Any) -> None:
        self.ty.convert_to_c(None, value, ctypes.pointer(out))  # type: ignore[arg-type]


class _Flags(Codec):
    def __init__(self, ty: FlagsType):
        self.ty = ty

    def peek(self, address: int) -> frozenset[str]:
        return FLAGS.peek(address)

    def lower(self, value: frozenset[str], out: Any) -> None:
        self.ty.convert_to_c(None, set(value), ctypes.pointer(out))  # type: ignore[arg-type]


_BY_NAME: dict[str, Codec] = {"String": STRING, "Bool": BOOL, "U32": U32, "U64": U64,
                              "S64": S64}


def codec_for(ty: ValType) -> Codec:
    """A codec reading (`peek`) and writing (`lower`) values of `ty`, a type that can
    cross a link (no resources: abi/links.py `plain`)."""
    simple = _BY_NAME.get(type(ty).__name__)
    if simple is not None:
        return simple
    if isinstance(ty, ListType):
        element = ty.element
        return BYTES if type(element).__name__ == "U8" else ListCodec(codec_for(element))
    if isinstance(ty, TupleType):
        return TupleCodec(*(codec_for(t) for t in ty.elements))
    if isinstance(ty, OptionType):
        return OptionCodec(codec_for(ty.payload))
    if isinstance(ty, ResultType):
        return _Result(None if ty.ok is None else codec_for(ty.ok),
                       None if ty.err is None else codec_for(ty.err))
    if isinstance(ty, VariantType):
        return _Variant({name: None if t is None else codec_for(t) for name, t in ty.cases})
    if isinstance(ty, EnumType):
        return ENUM
    if isinstance(ty, RecordType):
        return RecordCodec([(name, codec_for(t)) for name, t in ty.fields])
    if isinstance(ty, FlagsType):
        return _Flags(ty)
    return _Scalar(ty)


class LinkCalls:
    """The `LinkTap` of one importer: its link calls through an observer's `tap`."""

    def __init__(self, tap: Callable[[str, Callable[[], Any], list[Any], int | None], Any],
                 types: dict[str, dict[str, Any]]):
        self._tap = tap
        self._types = types
        self._codecs: dict[tuple[str, str], tuple[list[Codec], Codec]] = {}

    def _codecs_of(self, import_name: str, fn: str) -> tuple[list[Codec], Codec]:
        key = (import_name, fn)
        codecs = self._codecs.get(key)
        if codecs is None:
            fty = self._types[import_name][fn]
            codecs = ([codec_for(t) for _, t in fty.params], codec_for(fty.result))
            self._codecs[key] = codecs
        return codecs

    def __call__(self, shim: Shim, fn: str, serve: Callable[[], str | None], args: int,
                 results: int) -> str | None:
        params, result = self._codecs_of(shim.import_name, fn)
        where = f"link {shim.interface}.{fn}"
        lifted = [codec.peek(args + i * VAL_SIZE) for i, codec in enumerate(params)]
        served: list[str | None] = []

        def live() -> Any:
            why = serve()
            served.append(why)
            return Err(f"{where}: {why}") if why is not None else result.peek(results)

        answer = self._tap(where, live, lifted, None)
        if served:  # the real call ran: its answer is in place, or the shim writes the err
            return served[0]
        try:
            result.lower(answer, Val.from_address(results))
        except Exception:  # not an answer of this type (not in the recording)
            return f"replayed call not in the recording ({answer!r})"
        return None


def observe_links(imports: LinkImports, observer: CallObserver, component: Component,
                  engine: KernelEngine) -> None:
    """Route `imports`' calls (the shims of `component`) through `observer`."""
    imports.tap = LinkCalls(observer.tap, link_imports(component, engine))


def replay_links(name: str, component: Component, engine: KernelEngine,
                 observer: CallObserver) -> LinkImports | None:
    """Shims for `component`'s link imports that no provider serves: every call is
    answered by `observer` (a replay, from the recording). None: it imports none."""
    types = link_imports(component, engine)
    if not types:
        return None
    shims = [Shim(name, import_name, parse_interface(import_name).name,
                  tuple(sorted(fns)), None, "not in the recording")
             for import_name, fns in sorted(types.items())]
    imports = LinkImports(shims, lambda _fn, e: None)
    imports.tap = LinkCalls(observer.tap, types)
    return imports
