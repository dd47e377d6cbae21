"""Replay: one plugin re-run against what the recording says it was given.

A fresh instance of the plugin (the pinned component, or a new build of it)
gets every recorded message it handled, in seq order. Its host calls are
answered from the recording — the Nth host call of a message gets what the
Nth call got when it was recorded — so KV reads, capability answers and the
sender come back as they were, and nothing it does reaches the bus, KV or
files. Every host call's name and arguments, and each call's outcome (ok,
err, crash), are compared with the recording; a difference names the seq,
the host call and both values. Calls to linked plugins (abi/links.py) are
host calls like the rest: answered from the recording, no provider needed
(recorder/linkcalls.py).

VFS handles (`root`, `open-dir`, `open-file`) that were opened when recorded
are new handles of the replay's store naming no file: the calls made through
them are answered from the recording like the rest. Not answered from the
recording: WASI `monotonic-clock` (wasmtime's; docs/design/recorder.md). Each
instance's `init` is answered from the recorded `init` before it (live, on a
private bus with no KV or files, when none was recorded). A plugin's memory
is rebuilt from the first replayed message: replaying from the middle
(`--from`) starts it cold.

Guest calls run in a worker thread with an epoch ticker, as in the kernel, so
a replayed hang ends at the plugin's deadline; a crash gets a new instance for
the messages after it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from wasmtime.component import Component

from astrid_runtime.abi.canon import Case, Err, Ok
from astrid_runtime.abi.context import PluginContext
from astrid_runtime.abi.resource import ResourceError, own, rep_of
from astrid_runtime.abi.vfs import DIR, FILE
from astrid_runtime.abi.world import PluginLinker
from astrid_runtime.bus import Bus, Doorbell, Message, Sender
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import CompileError, PluginCrash, PluginError
from astrid_runtime.grants import Grants, Limits
from astrid_runtime.recorder.chunk import Call, Event, HostCall
from astrid_runtime.recorder.linkcalls import replay_links
from astrid_runtime.recorder.values import decode, encode, readable
from astrid_runtime.sandbox import PluginInstance

#: Host calls whose result is a handle of this store: a new one stands in for it.
LIVE = frozenset({"vfs.root", "vfs.[method]dir.open-dir", "vfs.[method]dir.open-file"})


@dataclass(frozen=True)
class Difference:
    """Where a replayed call parted from the recorded one."""

    seq: int
    #: `outcome`, or `host call N (name)`.
    where: str
    recorded: Any
    replayed: Any

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "where": self.where, "recorded": self.recorded,
                "replayed": self.replayed}

    def __str__(self) -> str:
        return (f"seq {self.seq}: {self.where}: recorded {self.recorded!r}, "
                f"replayed {self.replayed!r}")


@dataclass(frozen=True)
class Replayed:
    """One message replayed: the recorded and replayed outcome."""

    seq: int
    topic: str
    recorded: str
    replayed: str
    detail: str


@dataclass
class ReplayReport:
    plugin: str
    calls: list[Replayed] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    #: Recorded calls with no recorded event (dropped by retention): not replayed.
    skipped: list[int] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences

    def crashes(self) -> list[Replayed]:
        return [c for c in self.calls if c.replayed == "crash"]

    def to_json(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "identical": self.identical,
                "replayed": len(self.calls),
                "crashes": [{"seq": c.seq, "topic": c.topic, "reason": c.detail,
                             "recorded": c.recorded} for c in self.crashes()],
                "differences": [d.to_json() for d in self.differences],
                "skipped": self.skipped}


def _comparable(name: str, args: list[Any]) -> Any:
    # A VFS method's first argument is a handle pointer of this process.
    return encode(args[1:] if name.startswith("vfs.[method]") else args)


class ReplayTap:
    """A `CallObserver` answering each host call from the recorded call in hand."""

    def __init__(self, report: ReplayReport):
        self._report = report
        self._seq = 0
        self._expected: tuple[HostCall, ...] = ()
        self._index = 0
        self._active = False
        self._rep = 0
        self._label = "host call"

    def expect(self, call: Call) -> None:
        self._expected = call.host

    def begin(self, message: Message) -> None:
        self._seq, self._index, self._active = message.seq, 0, True

    def begin_init(self, init: Call) -> None:
        """The next host calls are an `init`'s, answered from the recorded `init`."""
        self._expected, self._label = init.host, "init host call"
        self._seq, self._index, self._active = init.seq, 0, False

    def _differ(self, where: str, recorded: Any, replayed: Any) -> None:
        self._report.differences.append(Difference(self._seq, where, recorded, replayed))

    def tap(self, name: str, call: Callable[[], Any], args: list[Any],
            store: int | None) -> Any:
        if not self._active and not self._expected:  # an init not recorded: live
            return call()
        if store is not None and name.startswith("vfs.[method]"):
            # Take the borrowed handle as the real function would: a borrow left
            # untouched fails the guest's call ("borrow handles still remain").
            with contextlib.suppress(ResourceError):
                rep_of(store, args[0], FILE if name.startswith("vfs.[method]file.") else DIR)
        i = self._index
        self._index += 1
        where = f"{self._label} {i + 1} ({name})"
        got = _comparable(name, args)
        if i >= len(self._expected):
            self._differ(where, None, readable(got))
            return call() if name in LIVE else Err(Case("unavailable", "not in the recording"))
        want = self._expected[i]
        want_args = want.args[1:] if name.startswith("vfs.[method]") else want.args
        if want.name != name:
            self._differ(where, want.name, name)
            return call() if name in LIVE else Err(Case("unavailable", "not in the recording"))
        if want_args != got:
            self._differ(where, readable(want_args), readable(got))
        answer = decode(want.result)
        if name in LIVE and isinstance(answer, Ok) and store is not None:
            # A handle of this store that names nothing: the calls made through it are
            # answered from the recording too (its destructor finds no VFS to close).
            self._rep += 1
            return Ok(own(store, self._rep, FILE if name.endswith("open-file") else DIR))
        return answer

    def end(self, outcome: str, detail: str) -> None:
        """A delivery (or an `init`) ended: recorded host calls it did not make differ."""
        self._active = False
        for j in range(self._index, len(self._expected)):
            missing = self._expected[j]
            self._differ(f"{self._label} {j + 1} ({missing.name})", readable(missing.args),
                         None)
        self._expected, self._label = (), "host call"


@dataclass(frozen=True)
class Target:
    """The plugin to replay: its (new or pinned) component and how it was run."""

    name: str
    component: Component
    config: str
    grants: Grants
    limits: Limits


async def replay(engine: KernelEngine, target: Target, events: list[Event],
                 calls: list[Call]) -> ReplayReport:
    """Replay `calls` (the plugin's recorded calls) with their `events`; see the module
    docstring. Runs guest code in worker threads; cancel-safe between messages."""
    report = ReplayReport(target.name)
    by_seq = {e.seq: e for e in events}
    tap = ReplayTap(report)
    doorbell = Doorbell(trio.lowlevel.current_trio_token(), threading.get_ident())
    bus = Bus()
    endpoint = bus.attach(target.name, target.grants, target.limits, doorbell)
    context = PluginContext(target.name, target.grants, target.limits, endpoint, None,
                            lambda *_: None, lambda *_: None, observer=tap,
                            links=replay_links(target.name, target.component, engine, tap))
    linker = PluginLinker(engine.engine, context)
    limiter = trio.CapacityLimiter(1)

    def start(init: Call | None) -> PluginInstance:
        instance = PluginInstance(target.name, engine, target.component, linker,
                                  target.limits)
        if init is None:  # not recorded: live, on the private bus, no KV or files
            instance.init(target.config)
            return instance
        tap.begin_init(init)
        try:
            instance.init(target.config)
        finally:
            tap.end("ok", "")
        return instance

    def deliver(instance: PluginInstance, event: Event) -> tuple[str, str]:
        context.current_sender = Sender(event.sender, event.sender_kernel)
        tap.begin(Message(event.topic, event.payload, event.sender, None, event.seq))
        outcome, detail = "ok", ""
        try:
            instance.on_message(event.topic, event.payload)
        except PluginError as e:
            outcome, detail = "error", str(e)
        except PluginCrash as e:
            outcome, detail = "crash", e.reason
        finally:
            tap.end(outcome, detail)
            context.current_sender = None
        return outcome, detail

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_ticker, engine)
        instance: PluginInstance | None = None
        init: Call | None = None
        for call in sorted(calls, key=lambda c: c.seq):  # stable: an init precedes its call
            if call.outcome == "init":
                init = call
                continue
            event = by_seq.get(call.seq)
            if event is None:
                report.skipped.append(call.seq)
                continue
            if instance is None:
                try:
                    instance = await trio.to_thread.run_sync(start, init, limiter=limiter)
                except (PluginCrash, PluginError, CompileError) as e:
                    report.differences.append(Difference(call.seq, "init", "ok", str(e)))
                    break
            tap.expect(call)
            outcome, detail = await trio.to_thread.run_sync(deliver, instance, event,
                                                            limiter=limiter)
            report.calls.append(Replayed(call.seq, event.topic, call.outcome, outcome, detail))
            if outcome != call.outcome or (outcome == "crash" and detail != call.detail):
                report.differences.append(Difference(
                    call.seq, "outcome", f"{call.outcome} {call.detail}".strip(),
                    f"{outcome} {detail}".strip()))
            if outcome == "crash":
                instance = None  # a trapped Store is poisoned: the next message gets a new one
        nursery.cancel_scope.cancel()
    return report


async def _ticker(engine: KernelEngine) -> None:
    while True:
        await trio.sleep(engine.epoch_tick_ms / 1000)  # the epoch tick, as the kernel's
        engine.increment_epoch()
