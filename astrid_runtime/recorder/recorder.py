"""The recorder: every bus delivery and every plugin call's host calls, into the store.

Thread model. The bus calls `on_delivery` in the publisher's thread (a guest
worker thread or the trio thread) and each plugin's `CallCapture` runs in its
guest's thread; both only append a tuple to a `deque` (thread-safe, no lock,
no I/O), so recording adds a few microseconds to a publish and nothing that
waits. The SurrealDB write happens in one worker thread per flush (`flush`,
every `flush_ms` and on `sync`), under a limiter of one: writes are never
concurrent and chunks are stored in order.

The garbage collector. What waits for a flush is made of objects the cyclic
GC never has to look at twice: an event is one flat tuple of ints, floats,
strings and bytes (not the `Message`, its `Sender` and the receivers' list),
a call one such tuple with its host calls laid out in it (`_call_row`; a
call whose values hold containers keeps its host calls pickled, `bytes`). Such tuples are
untracked at the first young collection, so they never reach the older
generations. Keeping the containers themselves (as before) added ~17
long-lived containers per relayed message: ~20 young collections a second
and a full collection (~40-130 ms, every thread stopped: the GIL) every few
seconds: measured, most of what recording cost (docs/design/recorder.md).

Bounds. At most `max_pending` events wait for a flush; past that (a store
slower than the bus for a long time) new events are counted in `lost`, never
queued, so memory stays bounded. The store keeps `max_events` (retention).

Durability. An event is durable once the flush holding it returned
(`durable_seq`); `sync` flushes now and returns that seq. A kill -9 loses
what was gathered since the last flush (at most `flush_ms` of traffic).
"""

from __future__ import annotations

import pickle
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from astrid_runtime.abi.canon import Err, Ok
from astrid_runtime.abi.context import PluginContext
from astrid_runtime.bus import Message
from astrid_runtime.recorder.chunk import (
    FLAT_ROW,
    HOST_ERR,
    HOST_OK,
    HOST_PLAIN,
    Rows,
)
from astrid_runtime.recorder.linkcalls import observe_links
from astrid_runtime.recorder.settings import RecordingSettings
from astrid_runtime.recorder.store import Store
from astrid_runtime.recorder.timeline import Timeline, files_written
from astrid_runtime.recorder.writer import StoreProcess

if TYPE_CHECKING:
    from astrid_runtime.kernel import Kernel

#: seq, time, topic, sender plugin, sender kernel, payload, *receivers (a store row)
_RawEvent = tuple[Any, ...]
#: a call as the store keeps it (`_call_row`)
_RawCall = tuple[Any, ...]
_HostCall = tuple[str, list[Any], Any]


def _pickled(host: list[_HostCall]) -> bytes:
    """A call's host calls pickled, as the store keeps a call that `_call_row` cannot
    lay flat: `(name, args, HOST_OK, x)` for an answer `Ok(x)`, `HOST_ERR` for
    `Err(x)`, `HOST_PLAIN` for any other. Pickling an `Ok` itself costs ~2 us more a
    call (the pickler imports the class's module to check it)."""
    rows = []
    for name, args, value in host:
        kind = type(value)
        if kind is Ok:
            rows.append((name, args, HOST_OK, value.value))
        elif kind is Err:
            rows.append((name, args, HOST_ERR, value.value))
        else:
            rows.append((name, args, HOST_PLAIN, value))
    return pickle.dumps(rows, protocol=5)


def _call_row(seq: int, plugin: str, version: str, outcome: str, detail: str,
              host: list[_HostCall], wrote: list[str], snapshot: str | None) -> _RawCall:
    """A call as the store keeps it (see "The garbage collector"): one flat tuple of
    plain values, `(seq, plugin, version, outcome, detail, FLAT_ROW, snapshot,
    len(wrote), *wrote, *host)`, each host call laid out as `name, kind, answer,
    len(args), *args` (`kind` HOST_OK for `Ok(x)`, kept as x; HOST_ERR; HOST_PLAIN).
    The collector untracks it at its first look. A call whose arguments or answers
    hold containers (lists, records, variants) is kept with its host calls pickled
    (`_pickled`) instead. Until 2026-12-01 20:45 every call was pickled in the guest's
    thread: measured in place with `time.thread_time`, ~10 us of CPU a call, a third
    of what recording cost the bus. (Nested tuples were tried: their outer levels
    survive young collections and reach the oldest generation.)"""
    flat: list[Any] = [seq, plugin, version, outcome, detail, FLAT_ROW, snapshot,
                       len(wrote), *wrote]
    for name, args, value in host:
        kind = type(value)
        if kind is Ok:
            code, value = HOST_OK, value.value
        elif kind is Err:
            code, value = HOST_ERR, value.value
        else:
            code = HOST_PLAIN
        if type(value) not in _PLAIN or any(type(a) not in _PLAIN for a in args):
            return (seq, plugin, version, outcome, detail, _pickled(host), tuple(wrote),
                    snapshot)
        flat += (name, code, value, len(args), *args)
    return tuple(flat)


#: Values a flat call row holds as they are (immutable, no references).
_PLAIN: Final = frozenset({str, bytes, int, float, bool, type(None)})


class CallCapture:
    """One plugin's `CallObserver`: collects the host calls of the delivery in hand.

    Used only from the plugin's guest thread (one call at a time per plugin).
    """

    def __init__(self, recorder: Recorder, plugin: str, version: str):
        self._recorder = recorder
        self.plugin = plugin
        self.version = version
        self._seq = 0
        self._host: list[tuple[str, list[Any], Any]] | None = None
        self._vfs = False  # a VFS call in this delivery: look for files written
        #: Calls of deliveries ended (`Recorder.calls_seen`).
        self.ended = 0
        #: Host calls made outside a delivery: the instance's `init`.
        self._init: list[tuple[str, list[Any], Any]] = []

    def begin(self, message: Message) -> None:
        if self._init:
            # The `init` of the instance about to take this message, recorded as a call
            # of outcome `init` at the same seq (before it): a replay answers its own
            # `init` from it.
            init, self._init = self._init, []
            self._recorder.on_call(_call_row(message.seq, self.plugin, self.version,
                                             "init", "", init, [], None))
        self._seq = message.seq
        self._host = []
        self._vfs = False

    def tap(self, name: str, call: Callable[[], Any], args: list[Any],
            store: int | None) -> Any:
        value = call()
        host = self._host
        if host is None:  # outside a delivery: the instance's init
            self._init.append((name, args, value))
        else:
            host.append((name, args, value))
            if store is not None:  # only VFS (and cap) functions take the store context
                self._vfs = True
        return value

    def end(self, outcome: str, detail: str) -> None:
        host, self._host = self._host or [], None
        wrote = files_written(host) if self._vfs else []
        snapshot = None
        timeline = self._recorder.timeline
        if wrote and timeline is not None:
            # Now, in the plugin's thread, before its next message: the files as this
            # event left them (one timeline; recorder/timeline.py).
            snapshot = timeline.snapshot(self._seq, self.plugin)
        recorder = self._recorder
        calls = recorder._calls
        if len(calls) >= recorder._max_pending:
            recorder.lost += 1
        else:
            calls.append(_call_row(self._seq, self.plugin, self.version, outcome, detail,
                                   host, wrote, snapshot))
        self.ended += 1  # this thread only: `Recorder.calls_seen` sums them
        if recorder._calls_event is not None:
            recorder.wake_waiter()


class Recorder:
    """Gathers events and calls and writes them to a `Store` in chunks."""

    def __init__(self, store: Store, settings: RecordingSettings):
        self.store = store
        self.settings = settings
        self._events: deque[_RawEvent] = deque()
        self._calls: deque[_RawCall] = deque()
        self._max_pending = settings.max_pending
        self._limiter = trio.CapacityLimiter(1)
        self._flushing = trio.Lock()
        self.durable_seq = store.last_seq()
        self.lost = 0
        self.written = 0
        #: Snapshots the session after each call that wrote files (one timeline).
        self.timeline: Timeline | None = None
        #: Every capture made (`calls_seen` sums their counts; one per plugin instance).
        self._captures: list[CallCapture] = []
        self._calls_event: trio.Event | None = None
        self._token = trio.lowlevel.current_trio_token()

    # -- producers (any thread) -------------------------------------------

    def on_delivery(self, message: Message, receivers: list[str]) -> None:
        if len(self._events) >= self._max_pending:
            self.lost += 1
            return
        sender = message.sender  # `message.who`, without building a Sender
        if sender is None:
            plugin, kernel = message.publisher, None
        else:
            plugin, kernel = sender.plugin, sender.kernel
        self._events.append((message.seq, time.time(), message.topic, plugin, kernel,
                             message.payload, *receivers))

    def on_call(self, raw: _RawCall) -> None:
        """Gather an instance's `init`, recorded as a call that no delivery ended
        (`CallCapture.end` appends a delivery's call itself, inline: the hot path)."""
        if len(self._calls) >= self._max_pending:
            self.lost += 1
        else:
            self._calls.append(raw)

    @property
    def calls_seen(self) -> int:
        """Plugin calls ended so far (each capture counts its own, lock-free)."""
        return sum(c.ended for c in list(self._captures))

    def wake_waiter(self) -> None:
        event = self._calls_event
        if event is not None:
            self._token.run_sync_soon(event.set)

    async def wait_calls(self, n: int) -> None:
        """Return once `n` plugin calls have ended since the recorder started (tests,
        `astrid replay` of a live kernel): their host calls are then gathered."""
        while self.calls_seen < n:
            event = self._calls_event = trio.Event()
            if self.calls_seen >= n:  # ended between the check and the event
                break
            await event.wait()
        self._calls_event = None

    def observer(self, plugin: str, version: str) -> CallCapture:
        capture = CallCapture(self, plugin, version)
        self._captures.append(capture)
        return capture

    # -- the writer ---------------------------------------------------------

    def _write(self, events: list[_RawEvent], calls: list[_RawCall]) -> None:
        self.store.write(Rows(events, calls))

    async def flush(self) -> int:
        """Write everything gathered so far; returns the highest durable seq."""
        async with self._flushing:
            events = [self._events.popleft() for _ in range(len(self._events))]
            calls = [self._calls.popleft() for _ in range(len(self._calls))]
            if events or calls:
                await trio.to_thread.run_sync(self._write, events, calls,
                                              limiter=self._limiter)
                self.written += len(events)
                self.durable_seq = max([self.durable_seq, *(e[0] for e in events),
                                        *(c[0] for c in calls)])
            return self.durable_seq

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Flush every `flush_ms` until cancelled (then one last flush)."""
        task_status.started()
        try:
            while True:
                await trio.sleep(self.settings.flush_ms / 1000)  # the flush period
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()

    def status(self) -> dict[str, Any]:
        status = {"store": self.store.url, "durable_seq": self.durable_seq,
                  "pending": len(self._events), "written": self.written, "lost": self.lost,
                  "max_events": self.store.max_events}
        if isinstance(self.store, StoreProcess):
            status["writer_pid"] = self.store.pid
        return status

    # -- wiring -------------------------------------------------------------

    def attach(self, kernel: Kernel) -> None:
        """Record `kernel`'s bus and the plugins started from now on."""
        kernel.bus.seq = max(kernel.bus.seq, self.store.last_seq())
        kernel.bus.on_record = self.on_delivery

        def hook(ctx: PluginContext) -> None:
            sup = kernel.supervisors.get(ctx.name)
            ctx.observer = observer = self.observer(ctx.name, sup.spec.version if sup else "")
            if ctx.links is not None and sup is not None:  # its calls to linked plugins
                observe_links(ctx.links, observer, sup.spec.component, kernel.engine)

        kernel.context_hooks.append(hook)
        kernel.status_sections["recording"] = self.status

        async def sync(_request: dict[str, Any]) -> dict[str, Any]:
            return {"ok": True, "durable_seq": await self.flush()}

        async def query(request: dict[str, Any]) -> dict[str, Any]:
            from astrid_runtime.recorder.query import answer
            await self.flush()
            return await trio.to_thread.run_sync(answer, self.store, request,
                                                 limiter=self._limiter)

        kernel.control_ops["recording.sync"] = sync
        kernel.control_ops["recording.query"] = query


@asynccontextmanager
async def recording(kernel: Kernel, settings: RecordingSettings, home: Path,
                    timeline: Timeline | None = None) -> AsyncIterator[Recorder | None]:
    """Record `kernel` for the block's duration (None when recording is switched off);
    with `timeline`, snapshot its session after each event that changed files."""
    if not settings.enabled:
        yield None
        return
    # The store in its own process (writer.py): its SurrealDB work off the kernel's GIL.
    store = await trio.to_thread.run_sync(StoreProcess, settings, home)
    try:
        recorder = Recorder(store, settings)
        recorder.timeline = timeline
        if timeline is not None and timeline.warn is None:
            timeline.warn = lambda why: kernel.log.event("warning", "recording.no_snapshot",
                                                         reason=why)
        recorder.attach(kernel)
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            try:
                yield recorder
            finally:
                kernel.bus.on_record = None
                nursery.cancel_scope.cancel()
    finally:
        # Shielded: the kernel stops its services by cancelling them, and a cancelled
        # `to_thread.run_sync` returns before running: the store was never closed.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.close)


async def serve(kernel: Kernel, settings: RecordingSettings, home: Path,
                timeline: Timeline | None = None, *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """`recording` as a kernel service (`kernel.start_service`): records until the
    kernel stops; started once the store is open and the bus is recorded. `astrid run`
    passes its session's `Timeline`."""
    async with recording(kernel, settings, home, timeline) as recorder:
        if recorder is not None:
            kernel.log.event("info", "recording.started", store=recorder.store.url,
                             seq=recorder.durable_seq, max_events=settings.max_events)
        task_status.started()
        await trio.sleep_forever()
