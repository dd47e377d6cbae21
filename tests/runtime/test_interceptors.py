"""WASM interceptors: the shipped C filters, and hostile ones that must fail closed.

Real parts: the committed `plugins/path-guard` and `plugins/secret-filter`
components, a hostile C interceptor built from `components/badinterceptor`
(zig + wasm-tools, ~1 s), pinned with `astrid plugin install`, loaded by
`start_approvals` in a real kernel, and asked through from WebAssembly by
the `pyecho` component.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from testkit import ExpectedLogs, running, spec
from wasmtime.component import Component

from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.interceptors import (
    Limits,
    Unavailable,
    WasmInterceptor,
    load_interceptors,
)
from astrid_runtime.approval.pipeline import Action
from astrid_runtime.approval.policy import InterceptorRule, load_policy
from astrid_runtime.approval.service import start_approvals
from astrid_runtime.bus import Tap
from astrid_runtime.engine import KernelEngine
from astrid_runtime.grants import Grants
from astrid_runtime.kernel import Kernel
from astrid_runtime.scaffold.build import build_plugin
from astrid_runtime.supervisor import State

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ASTRID = [str(Path(sys.executable).parent / "astrid")]
ASKER = Grants(publish=("echo.>",), subscribe=("echo.ask",), cap=("net.http", "fs.commit"))
LIMITS = Limits(fuel=1_000_000, timeout_ms=20, memory_bytes=2 * 1024 * 1024)


@pytest.fixture(scope="session")
def bad_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "bad.wasm"
    build_plugin(HERE / "components" / "badinterceptor", out=out,
                 work_dir=tmp_path_factory.mktemp("bad-build"))
    return out


def _load(engine: KernelEngine, wasm: Path, config: str, name: str = "t") -> WasmInterceptor:
    return WasmInterceptor(name, engine, engine.compile(wasm.read_bytes()).component, config,
                           LIMITS)


def _act(kind: str, resource: str, **details: str) -> Action:
    return Action("p", kind, resource, tuple(details.items()))


def test_path_guard_rules(engine: KernelEngine) -> None:
    guard = _load(engine, REPO / "plugins/path-guard/path-guard.wasm",
                  "deny fs.* workspace/.git/* no git metadata\n"
                  "ask net.http http://* plain http; allow * *")
    assert guard.check(_act("fs.commit", "workspace/.git/config")) == (
        "deny", "path-guard: deny fs.* workspace/.git/* no git metadata")
    # A commit of several paths: each is checked.
    assert guard.check(_act("fs.commit", "workspace/a.md,.git/HEAD"))[0] == "deny"
    assert guard.check(_act("fs.commit", "workspace/a.md,b.md")) == ("allow", "")
    assert guard.check(_act("net.http", "http://example.org/")) == (
        "ask", "path-guard: ask net.http http://* plain http")
    assert guard.check(_act("net.http", "https://example.org/"))[0] == "allow"
    bad = _load(engine, REPO / "plugins/path-guard/path-guard.wasm", "maybe x y")
    verdict = bad.check(_act("fs.commit", "workspace"))
    assert verdict[0] == "deny" and "rule 1: decision must be deny, ask or allow" in verdict[1]


@pytest.mark.parametrize(("where", "text", "pattern"), [
    ("resource", "https://x/?key=AKIAIOSFODNN7EXAMPLE", "aws-key"),
    ("body", "token ghp_" + "a1B2" * 9, "github-token"),
    ("body", "-----BEGIN OPENSSH PRIVATE KEY-----\nabc", "private-key"),
    ("body", "ping alice.smith+test@example.co.uk please", "email"),
    ("body", "AIza" + "x" * 35, "google-key"),
    ("body", "xoxb-1234567890-abc", "slack-token"),
])
def test_secret_filter_denies_and_never_echoes_the_secret(
        engine: KernelEngine, where: str, text: str, pattern: str) -> None:
    filt = _load(engine, REPO / "plugins/secret-filter/secret-filter.wasm", "deny")
    action = (_act("net.http", text) if where == "resource"
              else _act("net.http", "https://api.example/", body=text))
    decision, reason = filt.check(action)
    assert decision == "deny" and reason.startswith(f"secret-filter: {pattern} in "), reason
    assert text not in reason
    assert filt.check(_act("net.http", "https://api.example/", body="nothing here @ all")) == (
        "allow", "")


def test_secret_filter_config(engine: KernelEngine) -> None:
    wasm = REPO / "plugins/secret-filter/secret-filter.wasm"
    mail = _act("net.http", "https://api.example/", to="bob@example.org")
    assert _load(engine, wasm, "ask").check(mail)[0] == "ask"
    assert _load(engine, wasm, "-email").check(mail) == ("allow", "")
    decision, reason = _load(engine, wasm, "-colour").check(mail)
    assert decision == "deny" and "config words are ask, deny or -PATTERN" in reason


@pytest.mark.parametrize(("mode", "why"), [
    ("trap", "unreachable"), ("loop", "fuel exhausted"), ("grow", ""),
    ("init", "init refused: bad: refusing to start")])
def test_hostile_interceptors_fail_closed(engine: KernelEngine, bad_wasm: Path, mode: str,
                                          why: str) -> None:
    bad = _load(engine, bad_wasm, mode)
    for _ in range(2):  # and again, on a fresh instance
        decision, reason = bad.check(_act("net.http", "https://x/"))
        assert decision == "deny" and "interceptor t failed" in reason and why in reason
    assert bad.failures == 2


def test_a_trap_is_isolated_to_the_call(engine: KernelEngine, bad_wasm: Path) -> None:
    bad = _load(engine, bad_wasm, "allow")
    assert bad.check(_act("net.http", "trap"))[0] == "deny"
    assert bad.check(_act("net.http", "fine")) == ("allow", "")


def test_missing_or_unpinned_interceptors_deny_everything(
        engine: KernelEngine, tmp_path: Path) -> None:
    lock = tmp_path / "plugins.lock"
    stages = load_interceptors((InterceptorRule("nope"),), lock, engine)
    assert isinstance(stages[0], Unavailable)
    decision, reason = stages[0].check(_act("net.http", "https://x/"))
    assert decision == "deny" and "unavailable" in reason


def _install(lock: Path, plugin: Path) -> None:
    done = subprocess.run([*ASTRID, "--lockfile", str(lock), "plugin", "install",
                           "--allow-wildcards", str(plugin)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


async def test_interceptors_in_the_kernel_run_in_order_before_policy_and_fail_closed(
        kernel: Kernel, components: dict[str, Component], bad_wasm: Path, tmp_path: Path,
        expect_logs: ExpectedLogs) -> None:
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "bad.wasm").write_bytes(bad_wasm.read_bytes())
    (bad_dir / "plugin.toml").write_text(
        'name = "bad"\nversion = "0.1.0"\ncomponent = "bad.wasm"\nconfig = "allow"\n\n'
        "[capabilities]\n\n[limits]\nfuel_per_call = 1000000\ncall_timeout_ms = 20\n")
    lock = tmp_path / "plugins.lock"
    for plugin in (REPO / "plugins/secret-filter", REPO / "plugins/path-guard", bad_dir):
        await trio.to_thread.run_sync(_install, lock, plugin)
    policy_path = tmp_path / "policy.toml"
    # Autonomous: the policy allows everything outright, so only interceptors
    # deny or ask here.
    policy_path.write_text(
        'mode = "autonomous"\ndefault = "allow"\n\n'
        '[[interceptor]]\nname = "secret-filter"\n\n'
        '[[interceptor]]\nname = "path-guard"\nconfig = "deny * *.internal* internal hosts; '
        'ask net.http http://* plain http"\n\n'
        '[[interceptor]]\nname = "bad"\n')
    audit = AuditLog(None)
    approvals = await start_approvals(kernel, tmp_path / "home", load_policy(policy_path),
                                      lockfile=lock, audit=audit)
    asker = await running(kernel, spec(components, "pyecho", "asker",
                                       config="subscribe=echo.ask", grants=ASKER))
    results, asks = Tap(kernel.bus, "echo.ask.*"), Tap(kernel.bus, "approval.requested")

    async def ask(resource: str, **details: str) -> tuple[str, str]:
        kernel.publish("echo.ask", json.dumps({"kind": "net.http", "resource": resource,
                                               "hint": "", "details": details}).encode())
        with trio.fail_after(30):
            message = await results.receive()
        return message.topic, message.payload.decode()

    assert await ask("https://api.example/") == ("echo.ask.ok", "https://api.example/")
    # The first interceptor in order that denies decides, with its reason.
    topic, text = await ask("https://api.internal/", key="AKIAIOSFODNN7EXAMPLE")
    assert topic == "echo.ask.err" and "secret-filter: aws-key in details[key]" in text
    topic, text = await ask("https://api.internal/")
    assert topic == "echo.ask.err" and "path-guard: deny * *.internal* internal hosts" in text
    assert [e["stage"] for e in audit.lines if e.get("decision") == "deny"] == [
        "interceptor:secret-filter", "interceptor:path-guard"]
    # An interceptor's "ask" stands even in autonomous mode: a person answers.
    kernel.publish("echo.ask", json.dumps({"kind": "net.http", "resource": "http://plain/",
                                           "hint": ""}).encode())
    with trio.fail_after(30):
        ask_id = json.loads((await asks.receive()).payload)["id"]
    approvals.answer(ask_id, "once", "", "test")
    with trio.fail_after(30):
        assert (await results.receive()).topic == "echo.ask.ok"
    # The third interceptor traps on this one: denied, and nobody else notices.
    topic, text = await ask("trap")
    assert topic == "echo.ask.err" and "interceptor bad failed" in text
    assert await ask("https://api.example/") == ("echo.ask.ok", "https://api.example/")
    # ... and spins on this one: its fuel (or deadline) ends it, denied; the kernel,
    # the asker and the next check carry on.
    topic, text = await ask("loop")
    assert topic == "echo.ask.err" and "interceptor bad failed" in text, text
    assert "fuel exhausted" in text or "deadline exceeded" in text, text
    assert await ask("https://api.example/") == ("echo.ask.ok", "https://api.example/")
    assert asker.state is State.RUNNING and asker.crashes == 0
    status = kernel.status()
    assert [(i["name"], i["failures"]) for i in status["interceptors"]] == [
        ("secret-filter", 0), ("path-guard", 0), ("bad", 2)]
    assert "bad" not in kernel.supervisors  # pinned, but not booted as a plugin


async def test_a_loop_without_fuel_is_stopped_by_the_deadline(bad_wasm: Path) -> None:
    from astrid_runtime.engine import EngineSettings
    from astrid_runtime.kernel import open_kernel

    # No fuel metering at all: only the epoch deadline (the kernel's ticker) stops it.
    engine = KernelEngine(EngineSettings(consume_fuel=False), epoch_tick_ms=5)
    async with open_kernel(engine, None) as kernel:
        loop = _load(engine, bad_wasm, "loop")
        decision, reason = await trio.to_thread.run_sync(
            loop.check, _act("net.http", "https://x/"))
        assert decision == "deny" and "deadline exceeded" in reason
        # ... while the kernel's own loop kept running: its ticker got us here.
        assert kernel.status()["plugins"] == []


def test_interceptor_tables_are_checked(tmp_path: Path) -> None:
    from astrid_runtime.approval.policy import PolicyError

    path = tmp_path / "policy.toml"
    path.write_text('[[interceptor]]\nname = "a"\n\n[[interceptor]]\nname = "b"\nconfig = "x"\n')
    assert load_policy(path).interceptors == (InterceptorRule("a"), InterceptorRule("b", "x"))
    path.write_text('[[interceptor]]\nconfig = "x"\n')
    with pytest.raises(PolicyError, match="interceptor 1: missing required key 'name'"):
        load_policy(path)
    path.write_text('[[interceptor]]\nname = "a"\norder = 1\n')
    with pytest.raises(PolicyError, match=":3: unknown key 'order'"):
        load_policy(path)
