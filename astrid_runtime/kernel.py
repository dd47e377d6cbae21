"""astridd's core: wires engine, lockfile, bus, KV and supervisors in one nursery.

Boot: every plugin to run is verified against `plugins.lock` *before* a
single byte is compiled (read once, hash, compile those same bytes). A
plugin that is unlisted, mismatched, missing or malformed is refused with
one clear line and recorded in `status()`; the rest of the kernel boots.

Blocking work (hashing, compiling, KV open) goes to worker threads; guest
calls go through the supervisors under one `CapacityLimiter`.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from astrid_runtime.bus.nats import NatsBridge

from astrid_runtime.abi.context import ContextHook, KvBackend
from astrid_runtime.bus import Bus, Endpoint, Message
from astrid_runtime.engine import KernelEngine, digest
from astrid_runtime.errors import BusError, KernelError
from astrid_runtime.grants import DEFAULT_POLICY, GrantPolicy
from astrid_runtime.link_registry import LinkRegistry, Ready
from astrid_runtime.lockfile import LockEntry, Lockfile, load_lockfile, read_verified
from astrid_runtime.logs import KernelLog
from astrid_runtime.manifest import Manifest, load_manifest
from astrid_runtime.supervisor import PluginSpec, Supervisor

#: Largest payload `astrid publish` may send (plugins have their own limit).
CLIENT_MAX_PAYLOAD = 1024 * 1024


@dataclass(frozen=True)
class Refused:
    """A plugin the kernel would not start, and why (one line)."""

    name: str
    reason: str


@dataclass(frozen=True)
class BootPlan:
    """Where plugins come from: explicit plugin dirs, or every lockfile entry."""

    lockfile: Path
    plugins: tuple[Path, ...] | None = None


class Kernel:
    """A running kernel. Use `open_kernel` to start one inside a nursery."""

    def __init__(self, engine: KernelEngine, kv: KvBackend | None, guest_threads: int = 2,
                 log: KernelLog | None = None, policy: GrantPolicy = DEFAULT_POLICY):
        self.engine = engine
        #: Ceilings and wildcard rule every pin is checked against at boot.
        self.policy = policy
        self.kv = kv
        self.bus = Bus()
        self.log = log or KernelLog()
        self.limiter = trio.CapacityLimiter(guest_threads)
        self.supervisors: dict[str, Supervisor] = {}
        self.refused: dict[str, Refused] = {}
        self.started_at = time.time()
        self._nursery: trio.Nursery | None = None
        self.boot_stats: dict[str, Any] = {}
        self.bridge_stats: dict[str, int] = {}
        #: Run on each new plugin's context before it starts (VFS roots, approvals).
        self.context_hooks: list[ContextHook] = []
        #: Run first when the kernel stops (e.g. deny asks still waiting for a person,
        #: so no guest thread stays parked on one).
        self.stop_hooks: list[Callable[[], None]] = []
        #: Extra sections of `status()` (approvals, budgets), computed when asked.
        self.status_sections: dict[str, Callable[[], Any]] = {}
        #: Boot progress for `status()`: plugins still to verify and compile, and the one
        #: being compiled now (a cold boot of Python plugins takes seconds each).
        self._boot_queue: list[str] = []
        self._boot_current: str | None = None
        #: Plugins calling plugins: providers, and each importer's shims.
        self.links = LinkRegistry(engine, self.log)
        self.context_hooks.append(self.links.attach)
        self.status_sections["links"] = self.links.status
        #: Extra control-socket ops (the recorder's `astrid log`): op -> async handler
        #: of the request, returning the reply.
        self.control_ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {}

    # -- boot ----------------------------------------------------------------

    def _prepare(self, lock: Lockfile,
                 source: Path | LockEntry) -> tuple[Manifest, LockEntry, bytes]:
        """Worker thread: manifest + pin + verified bytes, or `KernelError`."""
        manifest = load_manifest(source.source if isinstance(source, LockEntry) else source)
        entry = lock.get(manifest.name)
        if entry is None:
            raise KernelError(f"plugin {manifest.name}: not in {lock.path.name} (unlisted); "
                              f"install it with `astrid plugin install {manifest.path.parent}`")
        if entry.version != manifest.version:
            raise KernelError(f"plugin {manifest.name}: version {manifest.version} but "
                              f"{lock.path.name} pins {entry.version}; reinstall it")
        problems = self.policy.problems(entry.grants, entry.limits)
        if problems:
            raise KernelError(f"plugin {manifest.name}: pinned " + "; ".join(problems)
                              + " (astridd.toml [ceilings], allow_wildcard_grants)")
        wasm = read_verified(entry, manifest.component)
        return manifest, entry, wasm

    async def boot(self, plan: BootPlan) -> None:
        """Verify, compile and start every plugin of `plan`; refuse bad ones, keep going."""
        assert self._nursery is not None
        lock = await trio.to_thread.run_sync(load_lockfile, plan.lockfile)
        sources: list[Path | LockEntry] = (list(plan.plugins) if plan.plugins is not None
                                           else list(lock.entries))
        t0 = time.perf_counter()
        hits = 0
        ready: list[Ready] = []
        self._boot_queue = [s.name for s in sources]  # a plugin dir is named for its plugin
        for source in sources:
            label = source.name if isinstance(source, LockEntry) else str(source)
            self._boot_current = source.name
            try:
                manifest, entry, wasm = await trio.to_thread.run_sync(
                    self._prepare, lock, source)
                self.log.event("info", "plugin.verified", plugin=entry.name,
                               blake3=entry.blake3[:16])
                t1 = time.perf_counter()
                compiled = await trio.to_thread.run_sync(
                    self.engine.compile, wasm, entry.blake3, limiter=self.limiter)
                if compiled.cache_note:
                    self.log.event("warning", "plugin.cache_rejected", plugin=entry.name,
                                   reason=compiled.cache_note)
                exports = compiled.component.type.exports(self.engine.engine)
                if "check" in exports and "on-message" not in exports:
                    # An astrid:kernel/interceptor: the approval pipeline runs it
                    # when the policy names it (approval/interceptors.py).
                    self.log.event("info", "plugin.interceptor", plugin=entry.name)
                    continue
                if not manifest.exports:  # a link provider need not be a bus plugin
                    self.engine.check_plugin_world(compiled.component)
                self.log.event("info", "plugin.compiled", plugin=entry.name,
                               cache_hit=compiled.cache_hit,
                               seconds=round(time.perf_counter() - t1, 3))
            except KernelError as e:
                name = source.name if isinstance(source, LockEntry) else Path(label).name
                self.refuse(name, str(e))
                continue
            hits += compiled.cache_hit
            extra = manifest.asks.exceeds(entry.grants) + manifest.limits.over(entry.limits)
            if extra:
                self.log.event("warning", "plugin.asks_more_than_granted", plugin=entry.name,
                               extra=extra)
            if manifest.config != entry.config:  # the pin's is used; reinstall to change it
                self.log.event("warning", "plugin.config_differs_from_pin", plugin=entry.name)
            ready.append((manifest, entry, compiled.component))
        self._boot_queue, self._boot_current = [], None
        # Links are resolved over every verified plugin, providers before importers.
        self.control_ops["links.swap"] = self.links.control_op(plan.lockfile, self.policy)
        for _manifest, entry, component in self.links.wire(ready, self.refuse):
            self.start(PluginSpec(entry.name, entry.version, component,
                                  entry.config, entry.grants, entry.limits))
        self.boot_stats = {"plugins": len(sources), "cache_hits": hits,
                           "seconds": round(time.perf_counter() - t0, 3)}
        self.log.event("info", "kernel.booted", **self.boot_stats, refused=len(self.refused))

    def refuse(self, name: str, reason: str) -> None:
        self.refused[name] = Refused(name, reason)
        self.log.event("error", "plugin.refused", plugin=name, reason=reason)

    def start(self, spec: PluginSpec) -> Supervisor:
        """Start supervising a compiled plugin (name must be new)."""
        assert self._nursery is not None
        if spec.name in self.supervisors:
            raise KernelError(f"plugin {spec.name} is already running")
        sup = Supervisor(spec, self.engine, self.bus, self.kv, self.log, self.limiter)
        self.supervisors[spec.name] = sup
        for hook in self.context_hooks:
            hook(sup.context)
        self._nursery.start_soon(sup.run, name=f"plugin:{spec.name}")
        return sup

    async def start_service(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run `fn(*args, task_status=...)` in the kernel's nursery (`nursery.start`)."""
        assert self._nursery is not None
        await self._nursery.start(fn, *args)

    def load_component(self, wasm: bytes) -> Any:
        """Compile bytes the caller already trusts (tests, benchmarks)."""
        return self.engine.compile(wasm, digest(wasm)).component

    # -- runtime -------------------------------------------------------------

    async def _ticker(self) -> None:
        # Deadlines are counted in epoch ticks; cancelling a trio scope does not
        # stop a guest running in a thread, only the epoch does (FIELD-NOTES).
        period = self.engine.epoch_tick_ms / 1000
        while True:
            await trio.sleep(period)
            self.engine.increment_epoch()

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish as the client (`astrid publish`); raises `BusError`."""
        if len(payload) > CLIENT_MAX_PAYLOAD:
            raise BusError("too-large", f"payload of {len(payload)} bytes is over the client "
                           f"limit of {CLIENT_MAX_PAYLOAD}")
        return self.bus.publish(None, topic, payload)

    async def bridge(self, bridge: NatsBridge, patterns: tuple[str, ...] = (">",)) -> None:
        """Join this kernel's bus to NATS until cancelled.

        Every local publish goes out (the bridge refuses to send back what came
        in, so two kernels cannot loop); messages arriving on `patterns` are
        published locally under their remote origin. NATS core is at-most-once:
        a message the bridge or a local mailbox cannot take is dropped, counted
        in `status()["bridge"]` and logged once per burst.
        """
        stats = self.bridge_stats
        stats.update({"out": 0, "in": 0, "dropped_out": 0, "dropped_in": 0})

        def forward(message: Message) -> None:
            try:
                if bridge.publish(message.topic, message.payload, message.publisher):
                    stats["out"] += 1
            except BusError as e:
                stats["dropped_out"] += 1
                if stats["dropped_out"] == 1 or stats["dropped_out"] % 1000 == 0:
                    self.log.event("warning", "bridge.dropped_out", reason=e.message,
                                   dropped=stats["dropped_out"])

        self.bus.on_publish = forward
        try:
            for pattern in patterns:
                await bridge.subscribe(pattern)
            async for incoming in bridge.inbound:
                try:
                    self.bus.publish(None, incoming.topic, incoming.payload,
                                     origin=incoming.origin, remote=incoming.sender)
                    stats["in"] += 1
                except BusError as e:
                    stats["dropped_in"] += 1
                    if stats["dropped_in"] == 1 or stats["dropped_in"] % 1000 == 0:
                        self.log.event("warning", "bridge.dropped_in", reason=e.message,
                                       topic=incoming.topic, dropped=stats["dropped_in"])
        finally:
            self.bus.on_publish = None

    def status(self) -> dict[str, Any]:
        plugins = [s.status() for s in self.supervisors.values()]
        plugins += [{"name": r.name, "state": "refused", "last_error": r.reason}
                    for r in self.refused.values()]
        seen = {p["name"] for p in plugins}
        queue, now = self._boot_queue, self._boot_current
        at = queue.index(now) if now in queue else len(queue)
        plugins += [{"name": name, "state": "compiling" if i == at else
                     "compiled" if i < at else "queued"}
                    for i, name in enumerate(queue) if name not in seen]
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "boot": self.boot_stats,
            "bridge": self.bridge_stats or None,
            "plugins": sorted(plugins, key=lambda p: p["name"]),
            **{name: section() for name, section in self.status_sections.items()},
        }

    def interrupt_guests(self) -> None:
        """Advance the epoch past every plugin's call deadline: each running guest traps
        at its next epoch check (used when the kernel is going away)."""
        tick = self.engine.epoch_tick_ms
        timeouts = [s.spec.limits.call_timeout_ms for s in self.supervisors.values()]
        timeouts += [p.call_timeout_ms for p in self.links.providers.values()]
        ticks = max((math.ceil(ms / tick) + 1 for ms in timeouts), default=0)
        for _ in range(ticks):
            self.engine.increment_epoch()

    def _run_stop_hooks(self) -> None:
        hooks, self.stop_hooks = self.stop_hooks, []
        for hook in hooks:
            hook()

    async def stop(self) -> None:
        """Stop every plugin after its current guest call, then cancel the kernel."""
        self._run_stop_hooks()
        for sup in self.supervisors.values():
            sup.stop()
        with trio.move_on_after(10):
            for sup in self.supervisors.values():
                await sup.wait_for(lambda s: s.state.value in ("stopped", "disabled"))
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_kernel(engine: KernelEngine, kv: KvBackend | None = None, *,
                      guest_threads: int = 2, log: KernelLog | None = None,
                      policy: GrantPolicy = DEFAULT_POLICY) -> AsyncIterator[Kernel]:
    """A kernel with its epoch ticker running; everything stops when the block exits."""
    kernel = Kernel(engine, kv, guest_threads, log, policy)
    async with trio.open_nursery() as nursery:
        kernel._nursery = nursery
        nursery.start_soon(kernel._ticker, name="epoch-ticker")
        try:
            yield kernel
        finally:
            kernel._run_stop_hooks()
            for sup in kernel.supervisors.values():
                sup.stop()
            # Cancelling the nursery stops the epoch ticker, but not a guest running
            # in a thread (FIELD-NOTES), which the nursery then waits for: only its
            # fuel would end a loop. Advance the epoch past every deadline instead.
            kernel.interrupt_guests()
            nursery.cancel_scope.cancel()


__all__ = ["BootPlan", "Endpoint", "Kernel", "Refused", "open_kernel"]
