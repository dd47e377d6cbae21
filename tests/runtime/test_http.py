"""Outbound HTTP as a kernel capability (`astrid:kernel/http`), through the real provider.

The real parts: the pinned `llm-openai` component (componentize-py, verified
against plugins.lock) in a real kernel with the approval pipeline
(policy, budgets in the kernel's KV, audit), the kernel's httpx client, and
a real HTTP server on 127.0.0.1. That server is a STAND-IN for a model
server (tests/fixtures/openai_standin.py): no model can be downloaded here.
Waits are bounded by `trio.fail_after`; none is a sleep.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from testkit import MemoryKv

from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.policy import load_policy
from astrid_runtime.approval.service import start_approvals
from astrid_runtime.bus import Message, Tap
from astrid_runtime.engine import KernelEngine
from astrid_runtime.kernel import BootPlan, Kernel, open_kernel
from astrid_runtime.net.provider import AgentOptions, attach
from astrid_runtime.net.secrets import Secret, Secrets
from astrid_runtime.supervisor import State
from tests.fixtures.openai_standin import Reply, StandIn, openai_standin

ROOT = Path(__file__).resolve().parents[2]
LOCKFILE = ROOT / "plugins.lock"
#: A bound on booting (a cold compile of an 18 MB component is ~60 s on a busy machine).
BOOT_TIMEOUT_S = 300
REPLY_TIMEOUT_S = 60
SECRET = "sk-standin-5e3c7a1f9d"

POLICY = """
[[rule]]
kind = "net.http"
decision = "allow"

[[budget]]
name = "tokens"
unit = "tokens"
limit = {limit}
per = "session"
kind = "net.http"
"""


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with openai_standin() as server:
        yield server


class Provider:
    """The kernel running llm-openai, a tap on every topic, the audit trail."""

    def __init__(self, kernel: Kernel, audit: AuditLog):
        self.kernel = kernel
        self.audit = audit
        self.everything = Tap(kernel.bus, ">")
        self.replies = Tap(kernel.bus, "llm.response")
        self.seen: list[Message] = []

    async def chat(self, request_id: str, text: str) -> dict[str, Any]:
        self.kernel.publish("llm.openai.chat", json.dumps(
            {"id": request_id, "messages": [{"role": "user", "content": text}]}).encode())
        with trio.fail_after(REPLY_TIMEOUT_S):
            message = await self.replies.receive()
        assert message.publisher == "llm-openai"
        reply: dict[str, Any] = json.loads(message.payload)
        assert reply["in_reply_to"] == request_id
        return reply

    async def bus_traffic(self) -> list[Message]:
        """Every message the tap holds so far (it saw the reply, so the rest is in)."""
        while True:
            with trio.move_on_after(0.2):  # a bounded drain, not synchronisation
                self.seen.append(await self.everything.receive())
                continue
            return self.seen


@pytest.fixture(scope="session")
def engine(shipped_home: Path) -> KernelEngine:
    """Overrides conftest's: the pinned plugins, compiled once per run (warmhome.py)."""
    return KernelEngine(cache_dir=shipped_home / "cache")


async def boot_provider(engine: KernelEngine, tmp_path: Path, endpoint: str,
                        limit: int = 1_000_000) -> AsyncIterator[Provider]:
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(POLICY.format(limit=limit))
    audit = AuditLog(None)
    secrets = Secrets((Secret("standin", ("127.0.0.1:*",), ("llm-openai",), "Authorization",
                              f"Bearer {SECRET}"),))
    async with open_kernel(engine, MemoryKv()) as kernel:
        await start_approvals(kernel, tmp_path / "home", load_policy(policy_path),
                              audit=audit, session="s1")
        attach(kernel, AgentOptions("openai", endpoint, "standin-model", secrets))
        provider = Provider(kernel, audit)
        with trio.fail_after(BOOT_TIMEOUT_S):
            await kernel.boot(BootPlan(LOCKFILE, (ROOT / "plugins" / "llm-openai",)))
            await kernel.supervisors["llm-openai"].wait_for(
                lambda s: s.state in (State.RUNNING, State.DISABLED))
        assert kernel.supervisors["llm-openai"].state is State.RUNNING, kernel.refused
        yield provider
        await kernel.stop()


@pytest.fixture
async def provider(engine: KernelEngine, tmp_path: Path,
                   standin: StandIn) -> AsyncIterator[Provider]:
    async for p in boot_provider(engine, tmp_path, standin.base_url):
        yield p


async def test_a_streamed_reply_arrives_and_the_secret_stays_in_the_kernel(
        provider: Provider, standin: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    standin.script.append(Reply("Hello from the stand-in model"))
    reply = await provider.chat("r1", "say hello")
    assert reply["message"]["content"] == "Hello from the stand-in model"
    assert reply["usage"]["total_tokens"] == 60
    # The server got the kernel's secret, the model and a streamed request.
    [received] = standin.received
    assert received.headers["Authorization"] == f"Bearer {SECRET}"
    assert received.body["model"] == "standin-model" and received.body["stream"] is True
    # Streamed text was published as it came (the server sent it in two pieces; how
    # many reads that takes is TCP's business), and the secret is nowhere
    # the plugin or anyone else can see: not on the bus, not in the audit, not in logs.
    traffic = await provider.bus_traffic()
    deltas = [json.loads(m.payload)["text"] for m in traffic if m.topic == "llm.delta"]
    assert "".join(deltas) == "Hello from the stand-in model"
    assert traffic and all(SECRET.encode() not in m.payload for m in traffic)
    allowed = [line for line in provider.audit.lines if line.get("kind") == "net.http"]
    assert [a["decision"] for a in allowed] == ["allow"]
    assert allowed[0]["details"]["secrets"] == "standin"
    assert SECRET not in json.dumps(provider.audit.lines)
    assert SECRET not in caplog.text


async def test_a_host_outside_the_grant_is_denied_and_audited(
        engine: KernelEngine, tmp_path: Path, standin: StandIn) -> None:
    # 127.0.0.2 is not in llm-openai's pinned grant (127.0.0.1:*, localhost:*,
    # api.openai.com): refused before any connection.
    endpoint = f"http://127.0.0.2:{standin.port}/v1"
    async for provider in boot_provider(engine, tmp_path, endpoint):
        reply = await provider.chat("r2", "anyone there?")
        assert reply["error"].startswith("denied: net.http on ")
        assert "host 127.0.0.2:" in reply["error"]
        assert "not in the plugin's net.http grant" in reply["error"]
        [line] = [a for a in provider.audit.lines if a.get("kind") == "net.http"]
        assert (line["decision"], line["stage"]) == ("deny", "grant")
        assert line["resource"] == endpoint + "/chat/completions"
    assert standin.received == []


async def test_an_exhausted_token_budget_stops_the_next_request(
        engine: KernelEngine, tmp_path: Path, standin: StandIn) -> None:
    # Each request declares cost.tokens = its size / 4 + max_tokens (1024): the
    # first fits in 1500, the second does not, and is never sent.
    standin.script.append(Reply("first answer"))
    async for provider in boot_provider(engine, tmp_path, standin.base_url, limit=1500):
        first = await provider.chat("r3", "one")
        assert first["message"]["content"] == "first answer"
        second = await provider.chat("r4", "two")
        assert "denied (budget:tokens)" in second["error"], second
        assert "of 1500 tokens left" in second["error"] or "tokens" in second["error"]
        decisions = [(a["decision"], a["stage"]) for a in provider.audit.lines
                     if a.get("kind") == "net.http"]
        assert decisions == [("allow", "policy"), ("deny", "budget:tokens")]
    assert len(standin.received) == 1


async def test_a_request_waiting_on_the_network_does_not_hold_a_guest_thread(
        provider: Provider, standin: StandIn) -> None:
    standin.gate = threading.Event()
    standin.script.append(Reply("late"))
    threads = provider.kernel.limiter.total_tokens
    provider.kernel.publish("llm.openai.chat", json.dumps(
        {"id": "r5", "messages": [{"role": "user", "content": "take your time"}]}).encode())
    arrived = await trio.to_thread.run_sync(standin.arrived.wait, REPLY_TIMEOUT_S)
    assert arrived
    # The server holds its answer: the provider's thread waits, parked.
    assert provider.kernel.limiter.total_tokens == threads + 1
    standin.gate.set()
    with trio.fail_after(REPLY_TIMEOUT_S):
        reply = json.loads((await provider.replies.receive()).payload)
    assert reply["message"]["content"] == "late"
    assert provider.kernel.limiter.total_tokens == threads
