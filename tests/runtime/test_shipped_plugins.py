"""The shipped plugins, as committed and pinned, doing their jobs in a real kernel.

Each test boots a kernel the way astridd does: components verified against
the repository's `plugins.lock`, compiled (cached across the session), and
supervised; messages go over the real bus; notes keep their data in a real
SurrealDB KV store (`mem://`). Waits are bounded by `trio.fail_after`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from testkit import ExpectedLogs

from astrid_runtime.bus import Tap
from astrid_runtime.engine import KernelEngine
from astrid_runtime.kernel import BootPlan, Kernel, open_kernel
from astrid_runtime.kv import KvStore
from astrid_runtime.net.provider import is_agent_plugin
from astrid_runtime.scaffold.build import shipped_plugins
from astrid_runtime.supervisor import State

ROOT = Path(__file__).resolve().parents[2]
LOCKFILE = ROOT / "plugins.lock"
#: The agent's plugins (orchestrator, llm-*) boot only under `astrid run --provider`.
PLUGINS = tuple(p for p in shipped_plugins(ROOT) if not is_agent_plugin(p.name))
#: Generous bound on one request/reply round trip (compiles are cached per session).
REPLY_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def plugin_engine(shipped_home: Path) -> KernelEngine:
    # The run's shared compile cache (tests/support/warmhome.py).
    return KernelEngine(cache_dir=shipped_home / "cache")


@pytest.fixture
def kv_store() -> Iterator[KvStore]:
    store = KvStore("mem://")
    yield store
    store.close()


async def boot(engine: KernelEngine, kv: KvStore) -> AsyncIterator[Kernel]:
    async with open_kernel(engine, kv) as kernel:
        with trio.fail_after(REPLY_TIMEOUT_S * len(PLUGINS)):
            await kernel.boot(BootPlan(LOCKFILE, PLUGINS))
            for sup in kernel.supervisors.values():
                await sup.wait_for(lambda s: s.state in (State.RUNNING, State.DISABLED))
        yield kernel


# Overrides tests/runtime/conftest.py's `kernel`: this one boots from plugins.lock.
@pytest.fixture
async def kernel(plugin_engine: KernelEngine, kv_store: KvStore) -> AsyncIterator[Kernel]:
    async for k in boot(plugin_engine, kv_store):
        yield k


class Conversation:
    """Publish a request, wait for the next `agent.response`, decode it."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.tap = Tap(kernel.bus, "agent.response")

    async def ask(self, topic: str, payload: bytes | str) -> tuple[str, dict[str, Any]]:
        raw = payload.encode() if isinstance(payload, str) else payload
        self.kernel.publish(topic, raw)
        with trio.fail_after(REPLY_TIMEOUT_S):
            message = await self.tap.receive()
        return message.publisher, json.loads(message.payload)

    async def next_reply(self) -> dict[str, Any]:
        with trio.fail_after(REPLY_TIMEOUT_S):
            message = await self.tap.receive()
        reply: dict[str, Any] = json.loads(message.payload)
        return reply

    async def say(self, text: str) -> dict[str, Any]:
        _, reply = await self.ask("user.input", text)
        return reply


async def test_every_shipped_plugin_boots_from_the_lock(kernel: Kernel) -> None:
    assert kernel.refused == {}
    states = {name: sup.state for name, sup in kernel.supervisors.items()}
    assert states == {"router": State.RUNNING, "notes": State.RUNNING,
                      "wordcount": State.RUNNING, "filetool": State.RUNNING,
                      "mdview": State.RUNNING, "dashboard": State.RUNNING}
    # markdown is a link provider (no bus instance): mdview calls it.
    assert [p["name"] for p in kernel.status()["links"]] == ["markdown"]


async def test_router_turns_user_input_into_agent_response(kernel: Kernel) -> None:
    talk = Conversation(kernel)
    publisher, reply = await talk.ask("user.input", "echo hello there")
    assert publisher == "router"
    assert reply == {"text": "hello there", "plugin": "router"}
    assert "note TEXT" in (await talk.say("help"))["text"]
    assert (await talk.say("hi"))["text"].startswith("Hello! I am Astrid.")  # manifest config
    assert "Type `help`" in (await talk.say("frobnicate the widget"))["text"]


async def test_router_accepts_json_input_and_answers_with_its_id(kernel: Kernel) -> None:
    talk = Conversation(kernel)
    reply = await talk.say(json.dumps({"text": "echo ping", "id": "req-42"}))
    assert reply == {"text": "ping", "plugin": "router", "in_reply_to": "req-42"}


async def test_notes_store_list_and_forget_through_kv(kernel: Kernel, kv_store: KvStore) -> None:
    talk = Conversation(kernel)
    publisher, added = await talk.ask("user.input", "note buy milk")
    assert publisher == "notes" and added["text"] == "Noted (#1)."
    assert (await talk.say("note call Ana  tomorrow"))["note"] == 2
    listed = await talk.say("notes")
    assert listed["notes"] == [{"id": 1, "text": "buy milk"},
                               {"id": 2, "text": "call Ana  tomorrow"}]
    assert listed["text"] == "1. buy milk\n2. call Ana  tomorrow"
    # The notes live in the notes plugin's own keyspace, nowhere else.
    assert kv_store.list("notes", "note/") == ["note/00000001", "note/00000002"]
    assert kv_store.get("notes", "note/00000001") == b"buy milk"
    assert kv_store.list("router", "") == []
    assert (await talk.say("forget 1"))["text"] == "Forgot note 1."
    assert (await talk.say("forget 1"))["text"] == "There is no note 1."
    assert (await talk.say("notes"))["notes"] == [{"id": 2, "text": "call Ana  tomorrow"}]


async def test_notes_answer_their_own_topics_directly(kernel: Kernel) -> None:
    talk = Conversation(kernel)
    assert (await talk.ask("notes.list", b""))[1]["text"] == "No notes yet."
    assert (await talk.ask("notes.add", json.dumps({"text": " "})))[1]["text"] == "Nothing to note."
    _, added = await talk.ask("notes.add", json.dumps({"text": "plain ü", "in_reply_to": 9}))
    assert added == {"text": "Noted (#1).", "plugin": "notes", "note": 1, "in_reply_to": 9}
    _, bad = await talk.ask("notes.delete", "abc")
    assert bad["text"] == "Which note? 'abc' is not a note number."


async def test_notes_survive_a_kernel_restart(plugin_engine: KernelEngine,
                                              kv_store: KvStore) -> None:
    async for kernel in boot(plugin_engine, kv_store):
        await Conversation(kernel).say("note persistent thought")
        await kernel.stop()
    async for kernel in boot(plugin_engine, kv_store):
        listed = await Conversation(kernel).say("notes")
        assert listed["notes"] == [{"id": 1, "text": "persistent thought"}]
        added = await Conversation(kernel).say("note second")
        assert added["note"] == 2
        await kernel.stop()


async def test_wordcount_counts_words_lines_and_characters(kernel: Kernel) -> None:
    talk = Conversation(kernel)
    publisher, reply = await talk.ask("tools.wordcount", "hello wörld\nfoo  bar\n")
    assert publisher == "wordcount"
    assert reply == {"text": "4 words, 2 lines, 21 characters", "plugin": "wordcount",
                     "words": 4, "lines": 2, "chars": 21, "bytes": 22}
    _, empty = await talk.ask("tools.wordcount", b"")
    assert empty["text"] == "0 words, 0 lines, 0 characters"
    _, one = await talk.ask("tools.wordcount", "one")
    assert one["text"] == "1 word, 1 line, 3 characters"


async def test_wordcount_handles_a_large_payload(kernel: Kernel) -> None:
    text = "lorem ipsum dolor\n" * 20_000  # 360 kB: grows the guest's arena past its start
    _, reply = await Conversation(kernel).ask("tools.wordcount", text)
    assert (reply["words"], reply["lines"], reply["bytes"]) == (60_000, 20_000, len(text))


async def test_router_forwards_count_to_the_c_plugin(kernel: Kernel) -> None:
    publisher, reply = await Conversation(kernel).ask("user.input", "count a b c")
    assert publisher == "wordcount" and reply["words"] == 3


async def test_plugins_keep_serving_after_bad_input(kernel: Kernel) -> None:
    talk = Conversation(kernel)
    kernel.publish("user.input", b"\xff\xfe not utf-8")
    assert "Type `help`" in (await talk.next_reply())["text"]  # answered, not crashed
    kernel.publish("tools.wordcount", b"\xff\xfe\x80")
    assert (await talk.next_reply())["bytes"] == 3
    assert (await talk.say("echo still here"))["text"] == "still here"
    for sup in kernel.supervisors.values():
        assert sup.state is State.RUNNING and sup.crashes == 0


async def test_input_injected_by_a_plugin_is_not_obeyed(
        kernel: Kernel, kv_store: KvStore, expect_logs: ExpectedLogs) -> None:
    """Issue 12, hole 5: a plugin granted `>` published `user.input` ("note evil
    injected") and the router obeyed, writing into notes' keyspace. The router now
    obeys only input the kernel stamped as the client's; notes take writes only
    from the router and the client."""
    from astrid_runtime.bus import Doorbell
    from astrid_runtime.grants import Grants, Limits

    expect_logs.allow("user.input ignored: not from a person",
                      "write ignored: sender may not change notes")

    # `evil` is on the bus as a plugin would be (Endpoint.publish is what the
    # bus.publish host function calls), with the wildcard grant an operator allowed.
    bell = Doorbell(trio.lowlevel.current_trio_token(), threading.get_ident())
    evil = kernel.bus.attach("evil", Grants(publish=(">",)), Limits(), bell)
    talk = Conversation(kernel)
    router, notes = kernel.supervisors["router"], kernel.supervisors["notes"]
    evil.publish("user.input", b"note evil injected")
    evil.publish("notes.add", b"evil writes directly")
    evil.publish("agent.response", json.dumps({"text": "hi", "plugin": "router"}).encode())
    with trio.fail_after(REPLY_TIMEOUT_S):
        forged = await talk.tap.receive()
        await router.wait_for(lambda s: s.endpoint.mailbox.stats.delivered >= 1
                              and s.endpoint.depth() == 0)
        await notes.wait_for(lambda s: s.endpoint.mailbox.stats.delivered >= 1
                             and s.endpoint.depth() == 0)
    assert forged.publisher == "evil"  # the payload's claim does not change the stamp
    assert kv_store.list("notes", "") == []  # nothing was written
    assert (await talk.say("notes"))["text"] == "No notes yet."
