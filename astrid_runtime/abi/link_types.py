"""Which interfaces a component links, and whether an import and an export can be
joined: the boot check of links.py, on wasmtime's component types alone (no
Store, no call). A linked function must pass only plain values (no resource,
stream or future: each belongs to one Store) and return `result<_, string>`.
"""

from __future__ import annotations

from typing import Any

from wasmtime.component import (
    Component,
    ListType,
    OptionType,
    RecordType,
    ResultType,
    String,
    TupleType,
    ValType,
    VariantType,
)

from astrid_runtime.engine import KernelEngine

#: Imports the kernel itself serves (the Host ABI, WASI): never links.
HOST_PACKAGES = ("astrid:kernel/", "wasi:")


def _interfaces(items: dict[str, Any], engine: KernelEngine) -> dict[str, dict[str, Any]]:
    """Interface name -> {function name -> FuncType}, for linkable (non-host) items."""
    out: dict[str, dict[str, Any]] = {}
    for name, item in items.items():
        if name.startswith(HOST_PACKAGES):
            continue
        ty = item.ty
        exports = getattr(ty, "exports", None)
        if exports is None:  # a bare function or type: not an interface
            out[name] = {}
            continue
        out[name] = {fn: ext.ty for fn, ext in exports(engine.engine).items()}
    return out


def link_imports(component: Component, engine: KernelEngine) -> dict[str, dict[str, Any]]:
    """The interfaces `component` imports from other plugins (not the Host ABI or WASI)."""
    return _interfaces(component.type.imports(engine.engine), engine)


def link_exports(component: Component, engine: KernelEngine) -> dict[str, dict[str, Any]]:
    """The interfaces `component` exports (candidates for other plugins' imports)."""
    return _interfaces(component.type.exports(engine.engine), engine)


def plain(ty: ValType | None) -> bool:
    """Whether values of `ty` can cross between Stores: no resource handle (own/borrow),
    stream, future or error-context anywhere inside (each belongs to one Store)."""
    if ty is None or type(ty).__name__ in ("Bool", "U8", "U16", "U32", "U64", "S8", "S16",
                                           "S32", "S64", "F32", "F64", "Char", "String",
                                           "EnumType", "FlagsType"):
        return True
    if isinstance(ty, ListType):
        return plain(ty.element)
    if isinstance(ty, OptionType):
        return plain(ty.payload)
    if isinstance(ty, ResultType):
        return plain(ty.ok) and plain(ty.err)
    if isinstance(ty, RecordType):
        return all(plain(t) for _, t in ty.fields)
    if isinstance(ty, TupleType):
        return all(plain(t) for t in ty.elements)
    if isinstance(ty, VariantType):
        return all(plain(t) for _, t in ty.cases)
    return False  # own, borrow, stream, future, error-context


def check_link_types(iface: str, wanted: dict[str, Any], offered: dict[str, Any]) -> str | None:
    """Why functions `wanted` (an import) cannot be served by `offered` (an export), or None."""
    for fn, fty in sorted(wanted.items()):
        oty = offered.get(fn)
        if oty is None:
            return f"{iface} has no function {fn}"
        if not all(plain(t) for _, t in fty.params) or not plain(fty.result):
            return (f"{iface}.{fn} passes a resource, stream or future, which cannot cross "
                    "between two plugins' Stores")
        result = fty.result
        if not (isinstance(result, ResultType) and isinstance(result.err, String)):
            return (f"{iface}.{fn} must return result<_, string> (a failed link call is "
                    "answered as err)")
        if [t for _, t in fty.params] != [t for _, t in oty.params] or result != oty.result:
            return f"{iface}.{fn} has another type in the importer than in the provider"
    return None
