"""A person in the loop: asks that wait, and the answers that end them.

Rules first (the ask queue, standing approvals, modes), then a real kernel:
the `pyecho` test component asks `cap.request` from inside WebAssembly, and
a person answers through the paths a person uses -- the `astrid` CLI
against the kernel's control socket (a subprocess), or a frontend plugin
publishing on the bus. Every wait has a bound (`trio.fail_after`), none is
a sleep; the ask deadline test uses a deadline already in the past.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio
from testkit import ExpectedLogs, running, spec
from wasmtime.component import Component

from astrid_runtime.approval.asks import Answer, AskQueue
from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.pipeline import Action
from astrid_runtime.approval.policy import DEFAULT_POLICY, Policy, PolicyError, Rule, load_policy
from astrid_runtime.approval.service import Approvals
from astrid_runtime.approval.standing import FILE, StandingGrants
from astrid_runtime.bus import Tap
from astrid_runtime.control import ControlServer
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import Refusal
from astrid_runtime.grants import Grants, Limits
from astrid_runtime.kernel import Kernel, open_kernel
from astrid_runtime.supervisor import State
from tests.support.warmhome import TEMPLATE, seed_home

ASTRID = [str(Path(sys.executable).parent / "astrid")]
KEY = b"k" * 32
ASKER = Grants(publish=("echo.>",), subscribe=("echo.ask",), cap=("net.http",))
FRONTEND = Grants(publish=("approval.answer",), subscribe=("approval.requested",))
URL = "https://example.org/"


# -- rules: the queue, standing approvals, modes ------------------------------------

def test_ask_queue_answer_wait_close_and_deadline() -> None:
    seen: list[tuple[str, str | None]] = []
    queue = AskQueue(timeout_s=60)
    queue.listeners.append(lambda ask, ans: seen.append((ask.id, ans and ans.decision)))
    ask = queue.open("p", "net.http", URL, (("why", "test"),), reason="asks")
    assert [a.id for a in queue.pending()] == [ask.id]
    queue.answer(ask.id, Answer("session", "cli"))
    assert queue.wait(ask.id) == Answer("session", "cli")
    with pytest.raises(Refusal) as info:
        queue.answer(ask.id, Answer("once", "cli"))
    assert info.value.kind == "not-found"
    late = queue.open("p", "net.http", URL, timeout_s=-1)  # its deadline has passed
    answer = queue.wait(late.id)
    assert (answer.decision, answer.by) == ("deny", "kernel") and "no answer" in answer.reason
    waiting = queue.open("p", "net.http", URL)
    queue.close("the kernel is stopping")
    assert queue.wait(waiting.id).reason == "the kernel is stopping"
    with pytest.raises(Refusal):
        queue.open("p", "net.http", URL)
    assert seen == [(ask.id, None), (ask.id, "session"), (late.id, None), (late.id, "deny"),
                    (waiting.id, None), (waiting.id, "deny")]


def test_standing_approvals_persist_revoke_and_refuse_forgeries(
        tmp_path: Path, expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("approval.standing_forged")
    grants = StandingGrants(tmp_path, KEY)
    session = grants.add("session", "p", "net.http", URL, "cli")
    always = grants.add("always", "p", "fs.commit", "workspace", "terminal")
    assert grants.find("p", "net.http", URL) == session
    assert grants.find("p", "net.http", URL + "x") is None  # exactly the asked scope
    again = StandingGrants(tmp_path, KEY)  # a new kernel: the session one is gone
    assert [g.id for g in again.listing()] == [always.id]
    # An entry written by anything but the kernel (wrong MAC) is not honoured.
    body = json.loads((tmp_path / FILE).read_text())
    body["grants"][0]["resource"] = "workspace/other"
    (tmp_path / FILE).write_text(json.dumps(body))
    assert StandingGrants(tmp_path, KEY).listing() == []
    (tmp_path / FILE).unlink()
    kept = StandingGrants(tmp_path, KEY).add("always", "p", "fs.commit", "workspace", "cli")
    assert grants.find("p", "fs.commit", "workspace") == kept  # re-read on change
    StandingGrants(tmp_path, KEY).revoke(kept.id)  # e.g. `astrid revoke` elsewhere
    assert grants.find("p", "fs.commit", "workspace") is None
    with pytest.raises(Refusal):
        grants.revoke(kept.id)


def test_modes_move_allow_and_ask_never_deny(tmp_path: Path) -> None:
    rules = (Rule("fs.commit", "allow", number=1), Rule("net.*", "deny", number=2))
    for mode, commit, other in (("safe", "ask", "ask"), ("guided", "allow", "ask"),
                                ("autonomous", "allow", "allow")):
        policy = Policy(rules, default="ask", mode=mode)
        assert policy.decide("p", "fs.commit", "workspace").decision == commit
        assert policy.decide("p", "spend.usd", "1").decision == other
        assert policy.decide("p", "net.http", URL).decision == "deny"
    path = tmp_path / "policy.toml"
    path.write_text('mode = "yolo"\n')
    with pytest.raises(PolicyError, match=":1: mode: must be one of safe, guided"):
        load_policy(path)
    path.write_text('mode = "safe"\nask_timeout_s = 30\n')
    assert (load_policy(path).mode, load_policy(path).ask_timeout_s) == ("safe", 30)


# -- a real kernel: pyecho asks from WebAssembly, a person answers ---------------------

@dataclass
class Desk:
    kernel: Kernel
    approvals: Approvals
    socket: Path
    audit: AuditLog
    home: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ASTRID, "--socket", str(self.socket), *args],
                              capture_output=True, text=True, timeout=60)

    async def acli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(lambda: self.cli(*args))

    def events(self, *names: str) -> list[dict[str, Any]]:
        return [e for e in self.audit.lines if e["event"] in names]


async def _desk(kernel: Kernel, tmp_path: Path, policy: Policy = DEFAULT_POLICY) -> Desk:
    home = tmp_path / "home"
    audit = AuditLog(tmp_path / "audit.jsonl")
    approvals = Approvals.open(home, policy, key=KEY, audit=audit)
    approvals.attach(kernel)
    sock = tmp_path / "k.sock"
    await kernel.start_service(ControlServer(kernel, sock, approvals).serve)
    await kernel.start_service(approvals.serve_bus, kernel)
    return Desk(kernel, approvals, sock, audit, home)


def _ask(kernel: Kernel, hint: str = "", resource: str = URL) -> None:
    kernel.publish("echo.ask", json.dumps({"kind": "net.http", "resource": resource,
                                           "hint": hint}).encode())


async def _next(tap: Tap) -> tuple[str, bytes]:
    with trio.fail_after(30):
        message = await tap.receive()
    return message.topic, message.payload


@pytest.mark.parametrize("scope", ["once", "session", "always"])
async def test_cli_answers_once_session_always_and_deny(
        kernel: Kernel, components: dict[str, Component], tmp_path: Path, scope: str) -> None:
    desk = await _desk(kernel, tmp_path)
    await running(kernel, spec(components, "pyecho", "asker", config="subscribe=echo.ask",
                               grants=ASKER))
    asks, results = Tap(kernel.bus, "approval.*"), Tap(kernel.bus, "echo.ask.*")
    _ask(kernel)
    topic, payload = await _next(asks)
    ask = json.loads(payload)
    assert topic == "approval.requested" and ask["plugin"] == "asker"
    # Nobody has answered yet: the ask waits, visible, for an approver arriving late.
    listed = await desk.acli("approvals", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [a["id"] for a in json.loads(listed.stdout)["pending"]] == [ask["id"]], \
        listed.stderr
    flags = {"once": [], "session": ["--session"], "always": ["--always"]}[scope]
    done = await desk.acli("approve", ask["id"], *flags)
    assert done.returncode == 0 and f"approved ({scope})" in done.stdout, done.stderr
    assert await _next(results) == ("echo.ask.ok", URL.encode())
    answered = json.loads((await _next(asks))[1])
    assert (answered["answer"], answered["by"]) == (scope, "cli")
    # The same request again: asked again after "once", allowed outright otherwise.
    _ask(kernel)
    if scope == "once":
        again = json.loads((await _next(asks))[1])
        denied = await desk.acli("deny", again["id"], "not", "today")
        assert denied.returncode == 0, denied.stderr
        topic, payload = await _next(results)
        assert topic == "echo.ask.err" and b"a person declined: not today" in payload
    else:
        assert await _next(results) == ("echo.ask.ok", URL.encode())
    standing = json.loads((await desk.acli("approvals", "--json")).stdout)["standing"]
    assert [g["scope"] for g in standing] == ([] if scope == "once" else [scope])
    assert (desk.home / FILE).exists() == (scope == "always")
    if scope != "once":  # revoked: the next request asks again
        assert (await desk.acli("revoke", standing[0]["id"])).returncode == 0
        _ask(kernel)
        assert json.loads((await _next(asks))[1])["plugin"] == "asker"
    # Answering what is no longer pending is refused with one line, exit 1.
    gone = await desk.acli("approve", ask["id"])
    assert gone.returncode == 1 and "no pending approval" in gone.stderr
    decisions = desk.events("cap.decision")
    assert decisions[0]["by"] == "cli" and decisions[0]["answer"] == scope
    assert desk.events("cap.ask")[0]["decision"] == "deferred"
    assert desk.events("cap.answer")[0]["by"] == "cli"


@pytest.mark.parametrize("hint", ["once", "session", "always", "deny"])
async def test_a_granted_frontend_plugin_answers_over_the_bus(
        kernel: Kernel, components: dict[str, Component], tmp_path: Path, hint: str) -> None:
    desk = await _desk(kernel, tmp_path)
    await running(kernel, spec(components, "pyecho", "asker", config="subscribe=echo.ask",
                               grants=ASKER))
    await running(kernel, spec(components, "pyecho", "frontend",
                               config="subscribe=approval.requested", grants=FRONTEND))
    results = Tap(kernel.bus, "echo.ask.*")
    _ask(kernel, hint)
    topic, payload = await _next(results)
    if hint == "deny":
        assert topic == "echo.ask.err" and b"the frontend said so" in payload
    else:
        assert (topic, payload) == ("echo.ask.ok", URL.encode())
    assert desk.events("cap.answer")[0]["by"] == "plugin:frontend"
    standing = desk.approvals.standing.listing()
    assert [g.scope for g in standing] == ([hint] if hint in ("session", "always") else [])


async def test_a_plugin_cannot_answer_its_own_ask(
        kernel: Kernel, components: dict[str, Component], tmp_path: Path) -> None:
    desk = await _desk(kernel, tmp_path)
    both = Grants(publish=("echo.>", "approval.answer"),
                  subscribe=("echo.ask", "approval.requested"), cap=("net.http",))
    # One plugin that asks and would answer: its own guest thread is the one
    # waiting, so it could not even take the event; the kernel refuses it anyway.
    await running(kernel, spec(components, "pyecho", "selfish", config="subscribe=echo.ask",
                               grants=both))
    asks = Tap(kernel.bus, "approval.requested")
    _ask(kernel, "once")
    ask = json.loads((await _next(asks))[1])
    desk.approvals._bus_answer(kernel, "selfish", json.dumps(
        {"id": ask["id"], "answer": "once"}).encode())
    desk.approvals._bus_answer(kernel, "client", json.dumps(
        {"id": ask["id"], "answer": "once"}).encode())
    refused = desk.events("cap.answer_refused")
    assert ["own ask" in r["reason"] for r in refused] == [True, False]
    assert [a.id for a in desk.approvals.queue.pending()] == [ask["id"]]
    desk.approvals.answer(ask["id"], "deny", "", "test")


async def test_a_frontend_without_the_grant_cannot_answer(
        kernel: Kernel, components: dict[str, Component], tmp_path: Path,
        expect_logs: ExpectedLogs) -> None:
    # pyecho does not catch the refusal: its on-message fails (an error or a trap).
    expect_logs.allow("plugin.refused_message", "plugin.crashed")
    desk = await _desk(kernel, tmp_path)
    await running(kernel, spec(components, "pyecho", "asker", config="subscribe=echo.ask",
                               grants=ASKER))
    # It sees the asks (subscribe grant) but may not publish on approval.answer.
    nosy = await running(kernel, spec(components, "pyecho", "nosy",
                                      config="subscribe=approval.requested",
                                      grants=Grants(subscribe=("approval.requested",))))
    asks, answers = Tap(kernel.bus, "approval.requested"), Tap(kernel.bus, "approval.answer")
    _ask(kernel, "once")
    ask = json.loads((await _next(asks))[1])
    with trio.fail_after(30):  # it took the ask, and its publish was refused
        await nosy.wait_for(lambda s: s.errors + s.crashes >= 1)
    assert answers.endpoint.depth() == 0  # nothing reached approval.answer
    assert [a.id for a in desk.approvals.queue.pending()] == [ask["id"]]
    assert desk.events("cap.answer") == []
    desk.approvals.answer(ask["id"], "deny", "", "test")


async def test_a_waiting_ask_blocks_no_other_plugin_and_costs_no_call_time(
        engine: KernelEngine, components: dict[str, Component], tmp_path: Path) -> None:
    # One guest thread for the whole kernel, and a 200 ms call timeout for the asker:
    # a parked ask must neither hold the thread nor be charged to the guest's deadline.
    async with open_kernel(engine, None, guest_threads=1) as kernel:
        desk = await _desk(kernel, tmp_path)
        asker = await running(kernel, spec(
            components, "pyecho", "asker", config="subscribe=echo.ask", grants=ASKER,
            limits=Limits(call_timeout_ms=200)))
        await running(kernel, spec(components, "pyecho", "echo", config="subscribe=echo.in"))
        asks, results = Tap(kernel.bus, "approval.requested"), Tap(kernel.bus, "echo.ask.*")
        out = Tap(kernel.bus, "echo.out")
        _ask(kernel)
        ask = json.loads((await _next(asks))[1])
        for n in range(3):  # the other plugin answers while the ask waits
            kernel.publish("echo.in", str(n).encode())
            assert await _next(out) == ("echo.out", str(n).encode())
        status = json.loads((await desk.acli("status", "--json")).stdout)
        assert status["approvals"] == {"mode": "guided", "pending": 1, "standing": 0}
        assert (await desk.acli("approve", ask["id"])).returncode == 0
        assert await _next(results) == ("echo.ask.ok", URL.encode())
        assert asker.state is State.RUNNING and asker.crashes == 0
        assert kernel.limiter.total_tokens == 1


async def test_unanswered_asks_expire_and_stopping_denies_the_waiting(
        engine: KernelEngine, components: dict[str, Component], tmp_path: Path) -> None:
    policy = replace(Policy(), ask_timeout_s=0.001)
    async with open_kernel(engine, None) as kernel:
        desk = await _desk(kernel, tmp_path, policy)
        await running(kernel, spec(components, "pyecho", "asker",
                                   config="subscribe=echo.ask", grants=ASKER))
        results = Tap(kernel.bus, "echo.ask.*")
        _ask(kernel)
        topic, payload = await _next(results)
        assert topic == "echo.ask.err" and b"no answer within" in payload
        desk.approvals.queue.timeout_s = 3600
        asks = Tap(kernel.bus, "approval.requested")
        _ask(kernel)
        await _next(asks)
        with trio.fail_after(30):
            await kernel.stop()
    answers = desk.events("cap.answer")
    assert [(a["by"], a["reason"]) for a in answers][-1] == ("kernel",
                                                            "the kernel is stopping")
    assert [d["decision"] for d in desk.events("cap.decision")] == ["deny", "deny"]


def test_pipeline_without_a_person_still_denies_ask(tmp_path: Path) -> None:
    from astrid_runtime.approval.pipeline import ApprovalPipeline
    from astrid_runtime.approval.token import TokenIssuer

    pipeline = ApprovalPipeline(TokenIssuer(KEY), AuditLog(None))
    with pytest.raises(Refusal, match="no approver is wired in"):
        pipeline.request(Action("p", "net.http", URL), ("net.http",))


# -- astridd: the same answers against the daemon ------------------------------------

def _tail(sock: Path, pattern: str) -> subprocess.Popen[str]:
    tail = subprocess.Popen([*ASTRID, "--socket", str(sock), "tail", pattern, "--count", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert tail.stderr is not None and "tailing" in tail.stderr.readline()
    return tail


@pytest.mark.usefixtures("components")  # pyecho compiled into the tests' cache
def test_astridd_asks_wait_for_astrid_approve(tmp_path: Path,
                                              component_paths: dict[str, Path]) -> None:
    from testkit import write_plugin

    plugin = write_plugin(tmp_path / "plugins", "asker", component_paths["pyecho"],
                          config="subscribe=echo.ask", publish=("echo.>",),
                          subscribe=("echo.ask",), extra='cap = ["net.http"]\n')
    lock = tmp_path / "plugins.lock"
    # --no-compile: the kernel's boot loads the component from its cache, which
    # shares the one the tests compiled it into (no 18 MiB compile here)
    done = subprocess.run([*ASTRID, "--lockfile", str(lock), "plugin", "install",
                           "--allow-wildcards", "--no-compile", str(plugin)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    home = seed_home(tmp_path / "home", TEMPLATE)
    config = tmp_path / "astridd.toml"
    config.write_text(f'home = "{home}"\nlockfile = "plugins.lock"\nkv = "none"\n')
    sock = home / "astridd.sock"
    astridd = str(Path(sys.executable).parent / "astridd")
    proc = subprocess.Popen([astridd, "--config", str(config)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    client = lambda *a: subprocess.run(  # noqa: E731
        [*ASTRID, "--socket", str(sock), *a], capture_output=True, text=True, timeout=60)
    try:
        assert proc.stderr is not None
        # A bound, not synchronisation: a daemon that never gets its plugin running
        # is killed, which ends the read below and fails the test.
        watchdog = threading.Timer(300, proc.kill)
        watchdog.start()
        booted = any('"plugin.running"' in line for line in proc.stderr)
        watchdog.cancel()
        assert booted, "astridd never started the asker"
        asked, ok = _tail(sock, "approval.requested"), _tail(sock, "echo.ask.*")
        body = json.dumps({"kind": "net.http", "resource": URL, "hint": ""})
        assert client("publish", "echo.ask", body).returncode == 0
        out, _ = asked.communicate(timeout=60)
        ask = json.loads(out.split(" ", 1)[1])
        listing = client("approvals")
        assert ask["id"] in listing.stdout and "asker wants net.http" in listing.stdout
        approved = client("approve", ask["id"], "--session")
        assert approved.returncode == 0, approved.stderr
        out, _ = ok.communicate(timeout=60)
        assert out.strip() == f"echo.ask.ok {URL}"
        status = json.loads(client("status", "--json").stdout)
        assert status["approvals"] == {"mode": "guided", "pending": 0, "standing": 1}
        # An ask still waiting when the kernel stops is denied; shutdown does not hang.
        asked = _tail(sock, "approval.requested")
        body = json.dumps({"kind": "net.http", "resource": URL + "other", "hint": ""})
        assert client("publish", "echo.ask", body).returncode == 0
        asked.communicate(timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    audit = [json.loads(x) for x in (home / "audit.jsonl").read_text().splitlines()]
    answers = [(e["answer"], e["by"]) for e in audit if e["event"] == "cap.answer"]
    assert answers == [("session", "cli"), ("deny", "kernel")]


def test_describe_escapes_what_a_plugin_chose(tmp_path: Path) -> None:
    from astrid_runtime.approval_cli import describe

    line = describe({"plugin": "p", "kind": "fs.commit",
                     "resource": "workspace\n\x1b[2Kyou> ", "details": {"x": "a\rb"},
                     "reason": ""})
    assert "\n" not in line and "\x1b" not in line and "\r" not in line
    assert "workspace\\n\\u001b[2Kyou> " in line


def test_revoke_and_list_always_approvals_with_no_kernel(tmp_path: Path) -> None:
    from astrid_runtime.identity import load_or_create_key

    home = tmp_path / "home"
    grant = StandingGrants(home, load_or_create_key(home)).add(
        "always", "filetool", "fs.commit", "workspace", "cli")
    env_run = lambda *a: subprocess.run(  # noqa: E731
        [*ASTRID, "--socket", str(tmp_path / "none.sock"), *a], capture_output=True,
        text=True, timeout=60, env={**os.environ, "ASTRID_HOME": str(home)})
    listed = env_run("approvals")
    assert listed.returncode == 0 and grant.id in listed.stdout, listed.stderr
    # a missing kernel is said, not read as "nothing waits" (a mistyped --socket)
    assert "no kernel at" in listed.stderr and str(home) in listed.stderr
    assert env_run("revoke", grant.id).returncode == 0
    assert StandingGrants(home, load_or_create_key(home)).listing() == []


async def test_a_frontend_arriving_late_has_the_waiting_asks_replayed(
        kernel: Kernel, components: dict[str, Component], tmp_path: Path) -> None:
    desk = await _desk(kernel, tmp_path)
    await running(kernel, spec(components, "pyecho", "asker", config="subscribe=echo.ask",
                               grants=ASKER))
    asks, results = Tap(kernel.bus, "approval.requested"), Tap(kernel.bus, "echo.ask.*")
    _ask(kernel, "session")
    first = json.loads((await _next(asks))[1])
    # The frontend starts after the ask was announced: it missed the event, and
    # asks for the waiting ones (its publish on approval.pending, as pyecho's own
    # bus.publish would send it; the kernel knows the publisher).
    late = Grants(publish=("approval.answer", "approval.pending"),
                  subscribe=("approval.requested",))
    await running(kernel, spec(components, "pyecho", "frontend",
                               config="subscribe=approval.requested", grants=late))
    kernel.supervisors["frontend"].endpoint.publish("approval.pending", b"")
    replayed = json.loads((await _next(asks))[1])
    assert (replayed["id"], replayed["replay"]) == (first["id"], True)
    # ... and answers it from the replay (its hint says "session").
    assert await _next(results) == ("echo.ask.ok", URL.encode())
    assert desk.events("cap.answer")[0]["by"] == "plugin:frontend"
