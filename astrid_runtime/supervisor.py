"""Supervision of one plugin: start, deliver mail, crash, back off, restart, disable.

See docs/design/supervisor.md for the invariants and crash states. In short:

- One supervisor task per plugin owns its instance. Every guest call goes
  through `trio.to_thread.run_sync` under the kernel's guest-thread
  limiter, one call at a time, so a Store is never entered from two
  threads.
- A crash (trap, fuel, deadline, memory) discards the instance and its
  Store whole. The message being handled is dropped (counted `poisoned`)
  so that one bad message cannot crash-loop a plugin; queued mail stays.
- Subscriptions and the mailbox belong to the plugin, not the instance:
  during backoff mail keeps queueing (bounded; when it is full, new mail
  for this plugin is dropped and counted as `overflowed`, and nobody else
  notices), and the restarted instance re-subscribes in `init`
  (subscribe is idempotent per pattern).
- `max_crashes` within `crash_window_s` disables the plugin: it leaves the
  bus (mail dropped and counted) and stays down until the kernel restarts.
  Nothing here touches any other plugin.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
from wasmtime.component import Component

from astrid_runtime.abi.context import KvBackend, PluginContext
from astrid_runtime.abi.world import PluginLinker
from astrid_runtime.bus import Bus, Doorbell, Endpoint
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import CompileError, PluginCrash, PluginError
from astrid_runtime.grants import Grants, Limits
from astrid_runtime.logs import KernelLog
from astrid_runtime.sandbox import PluginInstance

T = TypeVar("T")


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    DISABLED = "disabled"
    STOPPED = "stopped"


@dataclass(frozen=True)
class PluginSpec:
    """Everything needed to run a verified, compiled plugin."""

    name: str
    version: str
    component: Component
    config: str
    grants: Grants
    limits: Limits


class Supervisor:
    """Runs one plugin for the kernel's lifetime; see the module docstring."""

    def __init__(self, spec: PluginSpec, engine: KernelEngine, bus: Bus, kv: KvBackend | None,
                 log: KernelLog, limiter: trio.CapacityLimiter):
        self.spec = spec
        self.name = spec.name
        self._engine = engine
        self._bus = bus
        self._log = log
        self._limiter = limiter
        self._doorbell = Doorbell(trio.lowlevel.current_trio_token(), threading.get_ident())
        self.endpoint: Endpoint = bus.attach(spec.name, spec.grants, spec.limits, self._doorbell)
        self.endpoint.mailbox.on_overflow = self._overflowed
        self.context = PluginContext(spec.name, spec.grants, spec.limits, self.endpoint, kv,
                                     log.plugin_line, log.host_bug)
        self._linker: PluginLinker | None = None
        self.state = State.STARTING
        self.restarts = 0
        self.crashes = 0
        self.poisoned = 0
        self.errors = 0
        self.delivered = 0  # deliveries finished (the guest returned or failed)
        self.last_error: str | None = None
        self._crash_times: deque[float] = deque()
        self._stopping = threading.Event()
        self._delay_reset = False
        #: The live instance while RUNNING; `call_guest` (a frontend's HTTP calls,
        #: dashboard/frontend.py) uses it between deliveries.
        self.instance: PluginInstance | None = None
        #: Held around every guest call on the live instance, so mail and outside
        #: calls take turns and its Store is never entered from two threads.
        self.guest_lock = threading.Lock()
        #: A trap in an outside call: the instance is dead; `_serve` raises it.
        self._outside_crash: PluginCrash | None = None
        self._changed = trio.Event()

    # -- observation ---------------------------------------------------------

    def _set_state(self, state: State) -> None:
        self.state = state
        self._notify()

    def _notify(self) -> None:
        """Wake `wait_for` callers (trio thread only)."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[Supervisor], bool]) -> None:
        """Return once `predicate(self)` holds (checked at each state change and
        after each batch of deliveries)."""
        while not predicate(self):
            await self._changed.wait()

    def status(self) -> dict[str, Any]:
        box = self.endpoint.mailbox
        return {
            "name": self.name,
            "version": self.spec.version,
            "state": self.state.value,
            "restarts": self.restarts,
            "crashes": self.crashes,
            "last_error": self.last_error,
            "mailbox": self.endpoint.depth(),
            "mailbox_capacity": box.capacity,
            "delivered": box.stats.delivered,
            "overflowed": box.stats.overflowed,
            "dropped": box.stats.dropped,
            "poisoned": self.poisoned,
            "errors": self.errors,
            "published": self.endpoint.published,
            "subscriptions": sorted(s.pattern for s in self.endpoint.subscriptions.values()),
        }

    # -- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        """Supervise until cancelled or disabled."""
        limits = self.spec.limits
        delay = limits.backoff_initial_s
        try:
            while not self._stopping.is_set():
                self._set_state(State.STARTING)
                try:
                    # The instance lives only in this call chain: when it crashes,
                    # nothing here keeps its Store (and its memory) through the backoff.
                    await self._serve(await self._start())
                    return  # stopping
                except CompileError as e:
                    self._disable(str(e))
                    return
                except (PluginCrash, PluginError) as e:
                    if self._stopping.is_set():
                        return
                    if self._record_crash(str(e)):
                        return
                if self._delay_reset:  # it ran since the last crash: start over
                    delay, self._delay_reset = limits.backoff_initial_s, False
                self._set_state(State.BACKOFF)
                await trio.sleep(delay)  # the backoff itself, not synchronisation
                delay = min(delay * 2, limits.backoff_max_s)
                self.restarts += 1
        finally:
            self.context.release_handles()  # a stopped or disabled plugin holds none
            if self.state is not State.DISABLED:
                self._set_state(State.STOPPED)

    def stop(self) -> None:
        """Ask the delivery loop to stop after the current guest call."""
        self._stopping.set()
        self._doorbell.ring()

    def _overflowed(self, count: int) -> None:
        """A publisher's thread: this plugin's full mailbox dropped mail (first, every 1000th)."""
        self._log.event("warning", "plugin.mailbox_overflow", plugin=self.name,
                        overflowed=count, capacity=self.endpoint.mailbox.capacity)

    def _record_crash(self, reason: str) -> bool:
        """Count a crash; True when it disabled the plugin."""
        self.crashes += 1
        self.last_error = reason
        now = time.monotonic()
        self._crash_times.append(now)
        window = self.spec.limits.crash_window_s
        while self._crash_times and now - self._crash_times[0] > window:
            self._crash_times.popleft()
        self._log.event("error", "plugin.crashed", plugin=self.name, reason=reason,
                        crashes=self.crashes)
        if len(self._crash_times) >= self.spec.limits.max_crashes:
            self._disable(f"{len(self._crash_times)} crashes within {window:g}s; last: {reason}")
            return True
        return False

    def _disable(self, reason: str) -> None:
        self.last_error = reason
        dropped = self._bus.detach(self.endpoint)
        self._log.event("error", "plugin.disabled", plugin=self.name, reason=reason,
                        dropped=dropped)
        self._set_state(State.DISABLED)

    async def _start(self) -> PluginInstance:
        def build() -> PluginInstance:
            if self._linker is None:
                self._linker = PluginLinker(self._engine.engine, self.context)
            self.context.release_handles()  # handles die with the instance that held them
            instance = PluginInstance(self.name, self._engine, self.spec.component,
                                      self._linker, self.spec.limits)
            self._bus.begin_renewal(self.endpoint)
            try:
                instance.init(self.spec.config)
            finally:
                self._bus.end_renewal(self.endpoint)
            return instance

        return await trio.to_thread.run_sync(build, limiter=self._limiter)

    async def _serve(self, instance: PluginInstance) -> None:
        """Deliver mail until stopped; raises `PluginCrash` when the guest dies."""
        self._outside_crash = None
        self.instance = instance
        self._set_state(State.RUNNING)
        self._log.event("info", "plugin.running", plugin=self.name, restarts=self.restarts)
        self._delay_reset = True
        try:
            while not self._stopping.is_set():
                try:
                    await trio.to_thread.run_sync(self._drain, instance, limiter=self._limiter)
                finally:
                    self._notify()
                if self._stopping.is_set():
                    return
                await self._doorbell.wait()
                self._raise_outside_crash()
        finally:
            self.instance = None

    def _raise_outside_crash(self) -> None:
        crash, self._outside_crash = self._outside_crash, None
        if crash is not None:
            raise crash

    async def call_guest(self, fn: Callable[[PluginInstance], T]) -> T:
        """Run `fn(instance)` on the live instance, in a worker thread between two
        deliveries. A trap (`PluginCrash`, re-raised) discards the instance: the
        supervisor restarts it as after a crash in `on-message`. `PluginError` when the
        plugin is not running."""
        def run() -> T:
            with self.guest_lock:
                instance = self.instance
                if instance is None or self._outside_crash is not None:
                    raise PluginError(f"plugin {self.name} is {self.state.value}")
                try:
                    return fn(instance)
                except PluginCrash as e:
                    self.instance, self._outside_crash = None, e
                    self._doorbell.ring()
                    raise
        return await trio.to_thread.run_sync(run, limiter=self._limiter)

    def _drain(self, instance: PluginInstance) -> None:
        """Worker thread: hand queued messages to the guest, one at a time, in order."""
        while not self._stopping.is_set():
            message = self.endpoint.take()
            if message is None:
                return
            self.context.current_sender = message.who
            observer = self.context.observer
            outcome, detail = "ok", ""
            if observer is not None:
                observer.begin(message)
            try:
                with self.guest_lock:
                    self._raise_outside_crash()  # an outside call killed the instance
                    instance.on_message(message.topic, message.payload)
            except PluginError as e:
                outcome, detail = "error", str(e)
                self.errors += 1
                self.last_error = str(e)
                self._log.event("warning", "plugin.refused_message", plugin=self.name,
                                topic=message.topic, reason=str(e))
            except PluginCrash as e:
                outcome, detail = "crash", e.reason
                self.poisoned += 1
                raise
            finally:
                self.context.current_sender = None
                if observer is not None:
                    observer.end(outcome, detail)
                self.delivered += 1
