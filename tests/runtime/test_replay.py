"""Replay (issue 15): a recorded run replayed gives identical outputs, a changed
plugin shows where its outputs differ, a crash is reproduced at its message."""

from __future__ import annotations

from pathlib import Path

import trio
from recordkit import build_chance, relay_variant
from testkit import ExpectedLogs, spec
from wasmtime.component import Component

from astrid_runtime.bus import Tap
from astrid_runtime.engine import KernelEngine
from astrid_runtime.grants import Grants, Limits
from astrid_runtime.kernel import Kernel
from astrid_runtime.recorder.recorder import Recorder, recording
from astrid_runtime.recorder.replay import ReplayReport, Target, replay
from astrid_runtime.recorder.settings import RecordingSettings
from astrid_runtime.recorder.store import RecordingStore
from astrid_runtime.supervisor import State

RELAY = Grants(publish=("chain.>",), subscribe=("chain",))
ECHO = Grants(publish=("echo.>",), subscribe=("echo.>",), kv=True)
HOSTILE = Grants(subscribe=("hostile.>",))


async def record(kernel: Kernel, tmp_path: Path, plugin: str, component: Component,
                 config: str, grants: Grants, messages: list[tuple[str, bytes]],
                 limits: Limits | None = None, calls: int | None = None) -> Recorder:
    """Run `plugin` under a recorder, publish `messages`, wait until `calls` (default:
    one per message) plugin calls were handled."""
    settings = RecordingSettings(url=f"surrealkv://{tmp_path / 'rec'}")
    async with recording(kernel, settings, tmp_path) as rec:
        assert rec is not None
        sup = kernel.start(spec({"c": component}, "c", plugin, config=config, grants=grants,
                                limits=limits))
        with trio.fail_after(60):  # a bound, not a synchronisation
            await sup.wait_for(lambda s: s.state in (State.RUNNING, State.DISABLED))
            assert sup.state is State.RUNNING, sup.last_error
            for topic, payload in messages:
                kernel.publish(topic, payload)
            await rec.wait_calls(calls or len(messages))
        await rec.flush()
    return rec


async def replay_of(engine: KernelEngine, rec: Recorder, plugin: str, component: Component,
                    config: str, grants: Grants, limits: Limits | None = None
                    ) -> ReplayReport:
    store_url = rec.store.url
    store = await trio.to_thread.run_sync(RecordingStore, store_url)
    try:
        chunk = await trio.to_thread.run_sync(store.read)
    finally:
        store.close()
    calls = [c for c in chunk.calls if c.plugin == plugin]
    target = Target(plugin, component, config, grants, limits or Limits())
    return await replay(engine, target, chunk.events, calls)


async def test_a_recorded_run_replayed_gives_identical_outputs(
        kernel: Kernel, engine: KernelEngine, components: dict[str, Component],
        tmp_path: Path) -> None:
    # pyecho reads KV and asks the kernel for the sender: the replay answers both
    # from the recording (it has no KV at all).
    messages = [("echo.kv", b"milk"), ("echo.in", b"hello"), ("echo.sender", b""),
                ("echo.kv", b"eggs")]
    # pyecho hears its own 6 replies on `echo.>` too (and answers none of them).
    rec = await record(kernel, tmp_path, "echo", components["pyecho"], "", ECHO, messages,
                       calls=len(messages) + 6)
    report = await replay_of(engine, rec, "echo", components["pyecho"], "", ECHO)
    assert report.identical, [str(d) for d in report.differences]
    inputs = {t for t, _ in messages}
    assert [c.topic for c in report.calls if c.topic in inputs] == [t for t, _ in messages]
    assert len(report.calls) == len(messages) + 6
    assert all(c.replayed == c.recorded == "ok" for c in report.calls)


async def test_a_changed_plugin_replayed_shows_the_differing_outputs(
        kernel: Kernel, engine: KernelEngine, components: dict[str, Component],
        tmp_path: Path) -> None:
    rec = await record(kernel, tmp_path, "first", components["relay"], "chain", RELAY,
                       [("chain", b"a"), ("chain", b"b")])
    new_build = engine.compile(relay_variant(tmp_path)).component
    report = await replay_of(engine, rec, "first", new_build, "chain", RELAY)
    assert not report.identical
    assert [(d.where, d.recorded[0], d.replayed[0]) for d in report.differences] == [
        ("host call 1 (bus.publish)", "chain.r", "chain.x")] * 2
    same = await replay_of(engine, rec, "first", components["relay"], "chain", RELAY)
    assert same.identical


async def test_a_crash_is_reproduced_by_replay_at_its_message(
        kernel: Kernel, engine: KernelEngine, components: dict[str, Component],
        tmp_path: Path, expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.crashed")
    fast = Limits(backoff_initial_s=0.001, backoff_max_s=0.01)
    messages = [("hostile.fine", b""), ("hostile.trap", b""), ("hostile.fine", b"2")]
    rec = await record(kernel, tmp_path, "hostile", components["hostile"], "", HOSTILE,
                       messages, fast)
    report = await replay_of(engine, rec, "hostile", components["hostile"], "", HOSTILE, fast)
    assert report.identical, [str(d) for d in report.differences]
    (crash,) = report.crashes()
    assert (crash.topic, crash.recorded) == ("hostile.trap", "crash")
    assert crash.seq == report.calls[1].seq
    assert report.calls[2].replayed == "ok"  # a new instance took the next message


async def test_clock_and_randomness_are_recorded_and_replayed(
        kernel: Kernel, engine: KernelEngine, tmp_path: Path) -> None:
    chance = engine.compile(build_chance(tmp_path)).component
    grants = Grants(publish=("chance.out",), subscribe=("chance",))
    tap = Tap(kernel.bus, "chance.out")
    rec = await record(kernel, tmp_path, "chance", chance, "chance", grants,
                       [("chance", b""), ("chance", b"")])
    drawn = [(await tap.receive()).payload for _ in range(2)]
    assert drawn[0][:8] != drawn[1][:8]  # 64 random bits, twice
    assert drawn[0][24:32] != drawn[1][24:32]  # 64 insecure random bits, twice
    assert drawn[0][32:] != drawn[1][32:]  # the insecure seed, asked twice
    store = RecordingStore(rec.store.url)
    try:
        calls = store.read().calls
    finally:
        store.close()
    assert [[h.name for h in c.host] for c in calls] == [
        ["bus.subscribe"],  # the init, recorded before the first call
        *[["wasi:random.get-random-u64", "wasi:wall-clock.now",
           "wasi:insecure.get-insecure-random-u64", "wasi:insecure-seed.insecure-seed",
           "bus.publish"]] * 2]
    report = await replay_of(engine, rec, "chance", chance, "chance", grants)
    assert report.identical, [str(d) for d in report.differences]
    assert len(report.calls) == 2
