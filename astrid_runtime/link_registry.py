"""The kernel's links: resolved at boot, providers started, importers given their shims.

`Kernel.boot` hands every verified, compiled plugin to `LinkRegistry.wire`,
which applies the rules of `links.resolve` (missing provider, version
mismatch, cycle: refused with one line each), then walks the plugins in
dependency order: a provider gets a `LinkProvider` (its own Store, its
pinned limits), an importer a `LinkImports` whose shims call those
providers, checked function by function against the provider's types and
filtered by the importer's `link` grant. The plugins that are also bus
plugins (they export `on-message`) go back to the kernel to be supervised;
`attach` (a context hook) hands each its shims when its linker is built.

Blocking: `wire` and `swap` read types only (nothing is instantiated until a
call); `swap_pinned` reads, hashes and compiles.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from wasmtime.component import Component

from astrid_runtime.abi.context import PluginContext
from astrid_runtime.abi.links import (
    LinkImports,
    LinkProvider,
    check_link_types,
    link_exports,
    plan_shims,
)
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import KernelError
from astrid_runtime.grants import DEFAULT_POLICY, GrantPolicy
from astrid_runtime.links import LinkError, LinkNode, resolve
from astrid_runtime.lockfile import LockEntry, Lockfile, load_lockfile, read_verified
from astrid_runtime.logs import KernelLog
from astrid_runtime.manifest import Manifest, load_manifest

#: What boot hands over for each plugin that passed verification.
Ready = tuple[Manifest, LockEntry, Component]


class LinkRegistry:
    """Every provider and every importer's shims of one kernel."""

    def __init__(self, engine: KernelEngine, log: KernelLog):
        self._engine = engine
        self._log = log
        #: provider plugin name -> provider
        self.providers: dict[str, LinkProvider] = {}
        #: interface name (no version) -> provider, and its functions' types
        self._by_interface: dict[str, LinkProvider] = {}
        self._types: dict[str, dict[str, Any]] = {}
        #: importer plugin name -> its shims
        self.imports: dict[str, LinkImports] = {}

    def wire(self, ready: list[Ready], refuse: Callable[[str, str], None]) -> list[Ready]:
        """Link `ready` plugins; refuse those that cannot be linked; return the bus plugins."""
        plan = resolve(LinkNode(m.name, m.exports, m.imports) for m, _, _ in ready)
        for name, reason in sorted(plan.refused.items()):
            refuse(name, reason)
        by_name = {m.name: (m, e, c) for m, e, c in ready}
        bus_plugins: list[Ready] = []
        for name in plan.order:
            manifest, entry, component = by_name[name]
            try:
                imports = self._imports_for(manifest, entry, component)
                if manifest.exports:
                    self._add_provider(manifest, entry, component, imports)
            except KernelError as e:
                refuse(name, str(e))
                continue
            if imports is not None:
                self.imports[name] = imports
            if "on-message" in component.type.exports(self._engine.engine):
                bus_plugins.append((manifest, entry, component))
        return bus_plugins

    def _imports_for(self, manifest: Manifest, entry: LockEntry,
                     component: Component) -> LinkImports | None:
        shims = plan_shims(manifest.name, component, self._engine, manifest.imports,
                           entry.grants.link, self._by_interface, self._types)
        for shim in shims:
            if shim.denied:
                self._log.event("info", "link.not_granted", plugin=manifest.name,
                                interface=shim.import_name)
        if not shims:
            return None
        name = manifest.name
        return LinkImports(shims, lambda fn, e: self._log.host_bug(name, fn, e),
                           answer_cap=entry.limits.memory_bytes // 2)

    def _exports_of(self, manifest: Manifest, component: Component) -> dict[str, dict[str, Any]]:
        """Declared export name -> its functions' types; `LinkError` if one is missing."""
        offered = link_exports(component, self._engine)
        out: dict[str, dict[str, Any]] = {}
        for ref in manifest.exports:
            if str(ref) not in offered:
                raise LinkError(f"plugin {manifest.name} declares export {ref}, but its "
                                f"component does not export it")
            out[str(ref)] = offered[str(ref)]
        return out

    def _add_provider(self, manifest: Manifest, entry: LockEntry, component: Component,
                      imports: LinkImports | None) -> None:
        exports = self._exports_of(manifest, component)
        provider = LinkProvider(manifest.name, entry.version, self._engine, component,
                                entry.config, entry.limits,
                                {ref.name: str(ref) for ref in manifest.exports}, self._log,
                                imports)
        self.providers[manifest.name] = provider
        for ref in manifest.exports:
            self._by_interface[ref.name] = provider
            self._types[ref.name] = exports[str(ref)]
        self._log.event("info", "link.provider", plugin=manifest.name,
                        exports=[str(r) for r in manifest.exports])

    def swap(self, manifest: Manifest, entry: LockEntry, component: Component) -> None:
        """Replace a running provider by a newly pinned version of it (hot swap).

        The new component must export the same interfaces with the same
        function types (else `LinkError`, and the old one keeps serving).
        """
        provider = self.providers.get(manifest.name)
        if provider is None:
            raise LinkError(f"plugin {manifest.name} is not a running link provider")
        exports = self._exports_of(manifest, component)
        for ref in manifest.exports:
            if ref.name not in provider.exports:
                raise LinkError(f"plugin {manifest.name}: a swap cannot add export {ref}")
            problem = check_link_types(str(ref), self._types[ref.name], exports[str(ref)])
            if problem is not None:
                raise LinkError(f"plugin {manifest.name}: cannot swap: {problem}")
        provider.swap(component, entry.version, {r.name: str(r) for r in manifest.exports},
                      entry.limits, entry.config)
        self._log.event("info", "link.provider_swapped", plugin=manifest.name,
                        version=entry.version)

    def swap_pinned(self, lock: Lockfile, name: str, policy: GrantPolicy = DEFAULT_POLICY
                    ) -> None:
        """Hot-swap provider `name` to what `lock` now pins for it: the pin checked against
        the kernel's `policy`, the manifest at its source, the component verified against
        it and compiled, then `swap`.

        Blocking (reads, hashes, compiles): call it from a worker thread.
        """
        entry = lock.get(name)
        if entry is None:
            raise LinkError(f"plugin {name} is not pinned in {lock.path.name}")
        problems = policy.problems(entry.grants, entry.limits)
        if problems:
            raise LinkError(f"plugin {name}: pinned " + "; ".join(problems))
        manifest = load_manifest(entry.source)
        if manifest.version != entry.version:
            raise LinkError(f"plugin {name}: version {manifest.version} but "
                            f"{lock.path.name} pins {entry.version}; reinstall it")
        wasm = read_verified(entry, manifest.component)
        self.swap(manifest, entry, self._engine.compile(wasm, entry.blake3).component)

    def control_op(self, lockfile: Path, policy: GrantPolicy
                   ) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        """The `links.swap` control op (`astrid plugin swap NAME`): `swap_pinned` from the
        kernel's lockfile as it is on disk now, in a worker thread."""

        async def swap(request: dict[str, Any]) -> dict[str, Any]:
            name = request.get("plugin")
            if not isinstance(name, str):
                return {"ok": False, "kind": "invalid", "error": "links.swap needs a plugin"}
            try:
                lock = await trio.to_thread.run_sync(load_lockfile, lockfile)
                await trio.to_thread.run_sync(self.swap_pinned, lock, name, policy)
            except KernelError as e:
                return {"ok": False, "kind": "invalid", "error": str(e)}
            return {"ok": True, "plugin": name, "version": self.providers[name].version}

        return swap

    def attach(self, ctx: PluginContext) -> None:
        """Context hook: the plugin's shims, for its linker (none: it imports nothing)."""
        ctx.links = self.imports.get(ctx.name)

    def status(self) -> list[dict[str, Any]]:
        return [p.status() for p in sorted(self.providers.values(), key=lambda p: p.name)]
