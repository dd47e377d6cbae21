"""Links between plugins: which interface each exports and imports, resolved at boot.

Pure rules, no wasmtime (the shims that carry the calls are in
`abi/links.py`). A plugin's manifest names WIT interfaces with versions:

    exports = ["astrid:markdown/render@0.1.0"]   # it provides these
    imports = ["astrid:markdown/render@0.1.0"]   # it calls these

`resolve` orders the plugins so every provider comes before its importers,
and refuses, each with one line: an import nobody exports (missing
provider), an import whose only provider has an incompatible version
(mismatch), an interface exported twice, a cycle of imports, and any plugin
that depends on a refused one.

Versions follow semver as WIT uses it: an import of `x@1.2.0` is met by an
export of the same major that is not older (`x@1.2.0`, `x@1.4.1`); below
1.0 the minor counts as the major (an export `x@0.2.3` meets an import of
`x@0.2.0`, never one of `x@0.1.0` or `x@0.3.0`). A pre-release meets only
itself, and a name with no version meets only a name with no version.

A grant names the interfaces a plugin may call (`link` in the lock's
`[plugin.grants]`): either an exact `ns:pkg/iface@version` or the
interface without a version (any version).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from astrid_runtime.errors import KernelError

_REF_RE = re.compile(
    r"^(?P<ns>[a-z][a-z0-9-]*):(?P<pkg>[a-z][a-z0-9-]*)/(?P<iface>[a-z][a-z0-9-]*)"
    r"(?:@(?P<version>\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?))?$")


class LinkError(KernelError):
    """A link that cannot be made (bad name, missing provider, mismatch, cycle)."""


@dataclass(frozen=True, order=True)
class InterfaceRef:
    """`ns:pkg/iface@version`: one WIT interface, as a manifest names it."""

    name: str  # ns:pkg/iface
    version: str | None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_interface(text: str) -> InterfaceRef:
    """`ns:pkg/iface@1.2.3` (version optional) as an `InterfaceRef`; `LinkError` if malformed."""
    m = _REF_RE.match(text)
    if m is None:
        raise LinkError(f"{text!r} is not a WIT interface name like "
                        "'astrid:markdown/render@0.1.0'")
    return InterfaceRef(f"{m['ns']}:{m['pkg']}/{m['iface']}", m["version"])


def _semver(version: str) -> tuple[int, int, int, str]:
    core, _, pre = version.partition("-")
    major, minor, patch = (int(x) for x in core.split("."))
    return major, minor, patch, pre


def compatible(wanted: InterfaceRef, offered: InterfaceRef) -> bool:
    """Whether an export `offered` satisfies an import `wanted` (see the module docstring)."""
    if wanted.name != offered.name:
        return False
    if wanted.version is None or offered.version is None:
        return wanted.version == offered.version
    w, o = _semver(wanted.version), _semver(offered.version)
    if w[3] or o[3]:  # a pre-release matches only itself
        return w == o
    if w[0] != o[0] or (w[0] == 0 and w[1] != o[1]):
        return False
    return o[:3] >= w[:3]


def grant_covers(grant: str, wanted: InterfaceRef) -> bool:
    """Whether one `link` grant lets a plugin call `wanted`."""
    try:
        ref = parse_interface(grant)
    except LinkError:
        return False
    return ref.name == wanted.name and (ref.version is None or ref.version == wanted.version)


@dataclass(frozen=True)
class LinkNode:
    """What one plugin offers and needs."""

    name: str
    exports: tuple[InterfaceRef, ...] = ()
    imports: tuple[InterfaceRef, ...] = ()


@dataclass(frozen=True)
class LinkPlan:
    """The outcome of `resolve`."""

    #: Plugins that may start, providers before their importers.
    order: tuple[str, ...]
    #: (importer, import as declared) -> provider plugin.
    providers: dict[tuple[str, InterfaceRef], str]
    #: Plugin -> why it may not start (one line).
    refused: dict[str, str]


def resolve(nodes: Iterable[LinkNode]) -> LinkPlan:
    """Order `nodes` by their links; refuse what cannot be linked (see the module docstring)."""
    by_name = {n.name: n for n in nodes}
    refused: dict[str, str] = {}
    exporter: dict[str, tuple[str, InterfaceRef]] = {}
    for node in sorted(by_name.values(), key=lambda n: n.name):
        for ref in node.exports:
            if ref.name in exporter and exporter[ref.name][0] != node.name:
                refused[node.name] = (f"plugin {node.name} exports {ref}, already exported by "
                                      f"plugin {exporter[ref.name][0]}")
            else:
                exporter[ref.name] = (node.name, ref)
    providers: dict[tuple[str, InterfaceRef], str] = {}
    for node in by_name.values():
        for ref in node.imports:
            found = exporter.get(ref.name)
            if found is None:
                refused.setdefault(node.name, f"plugin {node.name} imports {ref}, which no "
                                              "plugin exports (missing provider)")
            elif not compatible(ref, found[1]):
                refused.setdefault(node.name, f"plugin {node.name} imports {ref}, but plugin "
                                              f"{found[0]} exports {found[1]} (version mismatch)")
            else:
                providers[(node.name, ref)] = found[0]
    for cycle in _cycles(by_name, providers):
        text = " -> ".join([*cycle, cycle[0]])
        for name in cycle:
            refused.setdefault(name, f"plugin {name} is in a link cycle: {text}")
    # Whoever imports from a refused plugin cannot start either.
    changed = True
    while changed:
        changed = False
        for (importer, ref), provider in providers.items():
            if provider in refused and importer not in refused:
                refused[importer] = (f"plugin {importer} imports {ref} from plugin {provider}, "
                                     "which was refused")
                changed = True
    order = _topological(by_name, providers, refused)
    live = {k: v for k, v in providers.items() if k[0] not in refused}
    return LinkPlan(tuple(order), live, refused)


def _deps(name: str, providers: dict[tuple[str, InterfaceRef], str]) -> list[str]:
    return sorted({p for (importer, _), p in providers.items() if importer == name})


def _cycles(by_name: dict[str, LinkNode],
            providers: dict[tuple[str, InterfaceRef], str]) -> list[list[str]]:
    """Each import cycle once (Tarjan's strongly connected components, self-loops too)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # plugin counts are small: recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in _deps(v, providers):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in _deps(v, providers):
                out.append(sorted(component))

    for name in sorted(by_name):
        if name not in index:
            visit(name)
    return out


def _topological(by_name: dict[str, LinkNode], providers: dict[tuple[str, InterfaceRef], str],
                 refused: dict[str, str]) -> list[str]:
    order: list[str] = []
    done: set[str] = set()

    def place(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for dep in _deps(name, providers):
            place(dep)
        order.append(name)

    for name in sorted(by_name):
        if name not in refused:
            place(name)
    return [n for n in order if n not in refused]
