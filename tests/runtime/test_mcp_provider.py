"""An MCP server plugged in as a tool provider: a tiny server written with the SDK,
started by the kernel over stdio, its tools served on `tools.mcp.NAME` under the
approval pipeline (a real kernel, a real subprocess, the SDK's real client)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from testkit import ExpectedLogs

from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.pipeline import ApprovalPipeline
from astrid_runtime.approval.policy import Policy, Rule
from astrid_runtime.approval.token import TokenIssuer
from astrid_runtime.bus import Tap
from astrid_runtime.errors import ConfigError
from astrid_runtime.kernel import Kernel
from astrid_runtime.mcp.provider import McpServerConfig, McpToolProvider, load_servers

#: A bound, not synchronisation: a Python MCP server imports its SDK (seconds under load).
WAIT_S = 60

SERVER = '''
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

app = MCPServer("calc")


def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


def shout(text: str) -> str:
    """Upper-case text."""
    return text.upper()


def fail() -> str:
    """Always fails."""
    raise ToolError("calc cannot do that")


for fn in (add, shout, fail):
    app.add_tool(fn, structured_output=False)
app.run()
'''


def _pipeline(tmp_path: Path) -> ApprovalPipeline:
    policy = Policy(rules=(
        Rule("mcp.call", "allow", resource="calc/add", number=1),
        Rule("mcp.call", "allow", resource="calc/fail", number=2),
        Rule("mcp.call", "deny", resource="calc/shout", reason="no shouting", number=3)))
    return ApprovalPipeline(TokenIssuer(b"k" * 32), AuditLog(tmp_path / "audit.jsonl"), policy)


async def _ask(kernel: Kernel, tap: Tap, topic: str, body: dict[str, Any]) -> dict[str, Any]:
    kernel.publish(topic, json.dumps(body).encode())
    with trio.fail_after(WAIT_S):
        while True:
            reply: dict[str, Any] = json.loads((await tap.receive()).payload)
            if reply.get("in_reply_to") == body.get("id"):
                return reply


async def test_a_tiny_mcp_server_serves_tools_on_the_bus(kernel: Kernel, tmp_path: Path,
                                                          expect_logs: ExpectedLogs) -> None:
    script = tmp_path / "calc.py"
    script.write_text(SERVER)
    pipeline = _pipeline(tmp_path)
    tap = Tap(kernel.bus, "agent.response")
    provider = McpToolProvider(kernel.bus, pipeline,
                               McpServerConfig("calc", (sys.executable, str(script))))
    await kernel.start_service(provider.serve)  # returns once the tools are listed

    listed = await _ask(kernel, tap, "tools.mcp.calc", {"id": "l", "list": True})
    assert listed["ok"] is True and listed["plugin"] == "mcp:calc"
    tools = {t["name"]: t for t in json.loads(listed["text"])}
    assert set(tools) == {"add", "shout", "fail"}
    assert set(tools["add"]["input_schema"]["required"]) == {"a", "b"}

    added = await _ask(kernel, tap, "tools.mcp.calc",
                       {"id": "a", "tool": "add", "arguments": {"a": 2, "b": 40}})
    assert (added["ok"], added["text"]) == (True, "42")
    # The policy denies this call before it reaches the server.
    shouted = await _ask(kernel, tap, "tools.mcp.calc",
                         {"id": "s", "tool": "shout", "arguments": {"text": "hi"}})
    assert shouted["ok"] is False and "no shouting" in shouted["text"], shouted
    # Approved, but the tool fails: its error comes back as the answer.
    failed = await _ask(kernel, tap, "tools.mcp.calc", {"id": "f", "tool": "fail"})
    assert failed["ok"] is False and "calc cannot do that" in failed["text"], failed
    bad = await _ask(kernel, tap, "tools.mcp.calc", {"id": "b", "tool": 7})
    assert bad["ok"] is False and "invalid" in bad["text"], bad

    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    decisions = [(e["resource"], e["decision"], e["plugin"]) for e in audit
                 if e["event"] == "cap.decision"]
    assert decisions == [("calc/add", "allow", "client"), ("calc/shout", "deny", "client"),
                         ("calc/fail", "allow", "client")], decisions
    calls = [(e["tool"], e["ok"]) for e in audit if e["event"] == "mcp.call"]
    assert calls == [("add", True), ("fail", False)], calls
    tap.close()


async def test_a_server_that_will_not_start_answers_every_request(
        kernel: Kernel, tmp_path: Path, expect_logs: ExpectedLogs) -> None:
    missing = tmp_path / "no-such-server"
    tap = Tap(kernel.bus, "agent.response")
    provider = McpToolProvider(kernel.bus, _pipeline(tmp_path),
                               McpServerConfig("gone", (str(missing),)))
    expect_logs.allow(f"mcp server gone stopped: [Errno 2] No such file or directory: "
                      f"'{missing}'")
    await kernel.start_service(provider.serve)
    reply = await _ask(kernel, tap, "tools.mcp.gone", {"id": "x", "tool": "add"})
    assert reply["ok"] is False and "the server is not running" in reply["text"], reply
    tap.close()


def test_server_config(tmp_path: Path) -> None:
    assert load_servers(tmp_path / "absent.toml") == ()
    good = tmp_path / "good.toml"
    good.write_text('[[server]]\nname = "calc"\ncommand = ["python3", "calc.py"]\n'
                    'env = { MODE = "exact" }\n')
    (server,) = load_servers(good)
    assert (server.name, server.command, server.env, server.topic) == (
        "calc", ("python3", "calc.py"), {"MODE": "exact"}, "tools.mcp.calc")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[server]]\nname = "a.b"\ncommand = ["x"]\n')
    with pytest.raises(ConfigError, match=r"bad.toml:2: .*one token"):
        load_servers(bad)
