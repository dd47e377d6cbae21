"""Replay of component-link calls (issue 15): a plugin's calls into a linked
component are host calls it observed, recorded with their answers and answered
from the recording in a replay, which needs no provider at all.

Real parts: the WAT importer and the hostile C provider of
`astrid:markdown/render` (tests/runtime/components/links), pinned in a
`plugins.lock` and booted by a real kernel under a real recorder
(SurrealDB, surrealkv)."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from linkkit import (
    CALLER_MANIFEST,
    RENDER,
    PluginDir,
    build_caller,
    build_hostile,
    provider_manifest,
    write_tree,
)
from testkit import ExpectedLogs

from astrid_runtime.abi.canon import Ok
from astrid_runtime.engine import KernelEngine
from astrid_runtime.grants import Grants, Limits
from astrid_runtime.kernel import BootPlan, Kernel
from astrid_runtime.recorder.chunk import Call
from astrid_runtime.recorder.recorder import recording
from astrid_runtime.recorder.replay import Target, replay
from astrid_runtime.recorder.settings import RecordingSettings
from astrid_runtime.recorder.store import RecordingStore
from astrid_runtime.recorder.values import encode
from astrid_runtime.supervisor import State

CALLER_GRANTS = Grants(subscribe=("in.*",), publish=("md.ok", "md.err"), link=(RENDER,))
PROVIDER_LIMITS = Limits(call_timeout_ms=200, memory_bytes=4 * 1024 * 1024,
                         fuel_per_call=10**10)
TO_HTML = "link astrid:markdown/render.to-html"
CRASHED = (f"{TO_HTML}: provider hostile crashed (wasm trap: wasm `unreachable` instruction "
           "executed); it is restarted")


@pytest.fixture(scope="session")
def link_wasm() -> dict[str, Path]:
    return {"caller": build_caller(), "hostile": build_hostile()}


async def test_link_calls_are_recorded_and_replayed_without_the_provider(
        kernel: Kernel, engine: KernelEngine, tmp_path: Path, link_wasm: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("link.provider_crashed")
    settings = RecordingSettings(url=f"surrealkv://{tmp_path / 'rec'}")
    inputs = [b"one", b"fail", b"trap", b"two"]
    async with recording(kernel, settings, tmp_path) as rec:
        assert rec is not None
        lock = write_tree(tmp_path / "tree", [
            PluginDir("hostile", link_wasm["hostile"], provider_manifest(RENDER), None,
                      PROVIDER_LIMITS),
            PluginDir("mdcaller", link_wasm["caller"], CALLER_MANIFEST, CALLER_GRANTS)])
        await kernel.boot(BootPlan(lock))
        sup = kernel.supervisors["mdcaller"]
        with trio.fail_after(60):  # a bound, not a synchronisation
            await sup.wait_for(lambda s: s.state is not State.STARTING)
            assert sup.state is State.RUNNING, sup.last_error
            for text in inputs:
                kernel.publish("in.md", text)
            await rec.wait_calls(len(inputs))
        await rec.flush()
        component = sup.spec.component

    store = await trio.to_thread.run_sync(RecordingStore, settings.url or "")
    try:
        chunk = await trio.to_thread.run_sync(store.read)
    finally:
        store.close()
    calls = [c for c in chunk.calls if c.plugin == "mdcaller" and c.outcome != "init"]
    links = [[(h.name, h.args, h.result) for h in c.host if h.name.startswith("link ")]
             for c in calls]
    # What the provider answered, as the caller saw it: ok, its own err, the shim's err
    # for its crash, and ok from the restarted provider.
    assert links == [[(TO_HTML, ["one"], {"ok": "<p>one</p>"})],
                     [(TO_HTML, ["fail"], {"err": "refused"})],
                     [(TO_HTML, ["trap"], {"err": CRASHED})],
                     [(TO_HTML, ["two"], {"ok": "<p>two</p>"})]]
    published = [[h.args for h in c.host if h.name == "bus.publish"] for c in calls]
    assert published[2] == [["md.err", {"b": base64.b64encode(CRASHED.encode()).decode()}]]

    # No provider in the replay: every to-html is answered from the recording.
    mine = [c for c in chunk.calls if c.plugin == "mdcaller"]
    target = Target("mdcaller", component, "in.*", CALLER_GRANTS, Limits())
    report = await replay(engine, target, chunk.events, mine)
    assert report.identical, [str(d) for d in report.differences]
    assert [(c.seq, c.replayed) for c in report.calls] == [(c.seq, "ok") for c in calls]

    # An answer changed in the recording reaches the replayed plugin, whose publish
    # then differs: the replay used the recorded answer, not a live provider.
    forged = [c if c.seq != calls[0].seq else _with_answer(c, Ok("<p>forged</p>"))
              for c in mine]
    changed = await replay(engine, target, chunk.events, forged)
    assert [d.where for d in changed.differences] == ["host call 2 (bus.publish)"]
    assert changed.differences[0].replayed == ["md.ok", "<p>forged</p>"]


def _with_answer(call: Call, answer: Ok[str]) -> Call:
    """`call` as if its to-html had answered `answer`."""
    host = tuple(replace(h, result=encode(answer)) if h.name == TO_HTML else h
                 for h in call.host)
    return replace(call, host=host)
