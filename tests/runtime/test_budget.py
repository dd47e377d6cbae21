"""Budgets: declared costs reserved when asked, refunded on deny, expiry or cancel,
charged on allow, kept in KV (the real embedded SurrealDB) across a kernel restart,
shown by `astrid status`.

The kernel tests run the `pyecho` component asking `cap.request` with a
`cost.usd` detail; a person answers through the `astrid` CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from testkit import running, spec
from wasmtime.component import Component

from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.budget import BudgetRule, Budgets
from astrid_runtime.approval.pipeline import Action
from astrid_runtime.approval.policy import PolicyError, load_policy
from astrid_runtime.approval.service import start_approvals
from astrid_runtime.bus import Tap
from astrid_runtime.control import ControlServer
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import Refusal
from astrid_runtime.grants import Grants
from astrid_runtime.kernel import open_kernel
from astrid_runtime.kv import KvStore

ASTRID = [str(Path(sys.executable).parent / "astrid")]
ASKER = Grants(publish=("echo.>",), subscribe=("echo.ask",), cap=("net.http",))
URL = "https://api.example/"
POLICY = """\
default = "deny"

[[rule]]
kind = "net.http"
decision = "ask"

[[budget]]
name = "spend"
unit = "usd"
limit = 1.0

[[budget]]
name = "calls"
unit = "requests"
limit = 10
per = "plugin"
"""


def _act(usd: str, plugin: str = "p") -> Action:
    return Action(plugin, "net.http", URL, (("cost.usd", usd), ("cost.requests", "1")))


def test_reserve_refund_charge_and_exhaustion() -> None:
    budgets = Budgets((BudgetRule("spend", "usd", 1.0),
                       BudgetRule("calls", "requests", 2, per="plugin")), "s1")
    first = budgets.reserve(_act("0.6"))
    assert first is not None
    with pytest.raises(Refusal, match=r"0\.5 usd asked, 0\.4 of 1 left"):
        budgets.reserve(_act("0.5"))  # the reservation counts before it is charged
    first.refund()
    first.refund()  # settling twice changes nothing
    second = budgets.reserve(_act("0.5"))
    assert second is not None
    second.charge()
    rows = {r["budget"]: r for r in budgets.report()}
    assert (rows["spend"]["spent"], rows["spend"]["reserved"]) == (0.5, 0.0)
    assert rows["calls"]["owner"] == "p" and rows["calls"]["spent"] == 1
    # All or nothing: "calls" would pass but "spend" refuses, so neither reserves.
    with pytest.raises(Refusal):
        budgets.reserve(_act("0.9"))
    assert {r["budget"]: r["reserved"] for r in budgets.report()} == {"calls": 0, "spend": 0}
    assert budgets.reserve(Action("p", "net.http", URL)) is None  # declares no cost
    with pytest.raises(Refusal, match="not a number"):
        budgets.reserve(_act("lots"))


def test_budget_tables_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    assert [b.per for b in load_policy(path).budgets] == ["session", "plugin"]
    path.write_text('[[budget]]\nname = "x"\nunit = "usd"\nlimit = -1\n')
    with pytest.raises(PolicyError, match=":4: limit: must be a number >= 0"):
        load_policy(path)
    path.write_text('[[budget]]\nname = "x"\nunit = "usd"\nlimit = 1\nper = "year"\n')
    with pytest.raises(PolicyError, match="per: must be one of session, plugin"):
        load_policy(path)


async def test_budget_in_the_kernel_refunds_on_deny_and_survives_a_restart(
        engine: KernelEngine, components: dict[str, Component], tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(POLICY)
    policy = load_policy(policy_path)
    url = f"surrealkv://{tmp_path}/kv"
    sock = tmp_path / "k.sock"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ASTRID, "--socket", str(sock), *args], capture_output=True,
                              text=True, timeout=60)

    async def acli(*args: str) -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(lambda: cli(*args))

    async def spend_row() -> dict[str, float]:
        status = json.loads((await acli("status", "--json")).stdout)
        row: dict[str, float] = next(r for r in status["budgets"] if r["budget"] == "spend")
        return row

    def ask(kernel_publish: object, usd: str) -> None:
        body = {"kind": "net.http", "resource": URL, "hint": "",
                "details": {"cost.usd": usd, "cost.requests": "1"}}
        kernel.publish("echo.ask", json.dumps(body).encode())

    kv = await trio.to_thread.run_sync(KvStore, url)
    try:
        async with open_kernel(engine, kv) as kernel:
            approvals = await start_approvals(kernel, tmp_path / "home", policy,
                                              audit=AuditLog(None), session="s1")
            await kernel.start_service(ControlServer(kernel, sock, approvals).serve)
            await running(kernel, spec(components, "pyecho", "asker",
                                       config="subscribe=echo.ask", grants=ASKER))
            asks, results = Tap(kernel.bus, "approval.requested"), Tap(kernel.bus, "echo.ask.*")

            async def next_ask() -> str:
                with trio.fail_after(30):
                    ident: str = json.loads((await asks.receive()).payload)["id"]
                return ident

            async def result() -> tuple[str, bytes]:
                with trio.fail_after(30):
                    message = await results.receive()
                return message.topic, message.payload

            ask(kernel, "0.6")
            ident = await next_ask()
            assert (await spend_row())["reserved"] == 0.6  # reserved while asked
            assert (await acli("deny", ident)).returncode == 0
            assert (await result())[0] == "echo.ask.err"
            assert (await spend_row())["reserved"] == 0  # refunded
            ask(kernel, "0.6")
            assert (await acli("approve", await next_ask())).returncode == 0
            assert (await result())[0] == "echo.ask.ok"
            row = await spend_row()
            assert (row["spent"], row["reserved"], row["left"]) == (0.6, 0, 0.4)
            text = (await acli("status")).stdout
            assert "budget spend (session s1): 0.6 spent, 0 reserved, 0.4 of 1 usd left" in text
            await kernel.stop()
    finally:
        await trio.to_thread.run_sync(kv.close)

    # A new kernel on the same KV: the spending is remembered; over the limit is
    # denied at once, without asking anyone.
    kv = await trio.to_thread.run_sync(KvStore, url)
    try:
        async with open_kernel(engine, kv) as kernel:
            audit = AuditLog(None)
            approvals = await start_approvals(kernel, tmp_path / "home", policy, audit=audit,
                                              session="s1")
            await kernel.start_service(ControlServer(kernel, sock, approvals).serve)
            await running(kernel, spec(components, "pyecho", "asker",
                                       config="subscribe=echo.ask", grants=ASKER))
            results = Tap(kernel.bus, "echo.ask.*")
            assert (await spend_row())["spent"] == 0.6
            ask(kernel, "0.6")
            with trio.fail_after(30):
                message = await results.receive()
            assert message.topic == "echo.ask.err"
            assert b"0.6 usd asked, 0.4 of 1 left" in message.payload
            assert audit.lines[-1]["stage"] == "budget:spend"
            assert approvals.queue.pending() == []
            await kernel.stop()
    finally:
        await trio.to_thread.run_sync(kv.close)


async def test_a_reservation_is_refunded_when_its_ask_expires_or_is_cancelled(
        engine: KernelEngine, components: dict[str, Component], tmp_path: Path) -> None:
    # Nobody answers: the ask's deadline passes (a deadline already past, not a
    # sleep), then an ask still waiting is cancelled by the kernel stopping.
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(POLICY)
    policy = replace(load_policy(policy_path), ask_timeout_s=0.001)
    audit = AuditLog(None)
    async with open_kernel(engine, None) as kernel:
        approvals = await start_approvals(kernel, tmp_path / "home", policy, audit=audit,
                                          session="s1")
        await running(kernel, spec(components, "pyecho", "asker",
                                   config="subscribe=echo.ask", grants=ASKER))
        results = Tap(kernel.bus, "echo.ask.*")

        def spend() -> tuple[float, float]:
            row = next(r for r in approvals.budget_status() if r["budget"] == "spend")
            return row["spent"], row["reserved"]

        body = json.dumps({"kind": "net.http", "resource": URL, "hint": "",
                           "details": {"cost.usd": "0.6", "cost.requests": "1"}}).encode()
        kernel.publish("echo.ask", body)
        with trio.fail_after(30):
            message = await results.receive()
        assert message.topic == "echo.ask.err" and b"no answer within" in message.payload
        assert spend() == (0, 0)  # expired: refunded
        approvals.queue.timeout_s = 3600
        asks = Tap(kernel.bus, "approval.requested")  # after the first ask's announcement
        kernel.publish("echo.ask", body)
        with trio.fail_after(30):
            await asks.receive()
        assert spend() == (0, 0.6)  # reserved while it waits
        with trio.fail_after(30):
            await kernel.stop()
    assert spend() == (0, 0)  # cancelled by the kernel stopping: refunded
    answers = [(a["by"], a["reason"]) for a in audit.lines if a["event"] == "cap.answer"]
    assert answers[-1] == ("kernel", "the kernel is stopping")
    assert [d["stage"] for d in audit.lines if d["event"] == "cap.decision"] == [
        "approval", "approval"]
