"""An MCP server plugged into the kernel as a tool provider.

    # $ASTRID_HOME/mcp-servers.toml
    [[server]]
    name = "calc"                         # a topic token: requests on tools.mcp.calc
    command = ["python3", "calc.py"]      # started over stdio, the kernel's child
    env = { CALC_MODE = "exact" }         # optional, added to a minimal environment

The kernel starts each configured server (`McpToolProvider.serve`, a kernel
service), lists its tools, and serves `tools.mcp.NAME` on the bus:

    {"id": "r1", "list": true}                       -> the tools (name, description,
                                                        input schema) as JSON text
    {"id": "r2", "tool": "add", "arguments": {...}}  -> the tool's text result

Answers go to `agent.response` as `{"text", "ok", "plugin": "mcp:NAME",
"in_reply_to"}`. Every call is an action for the approval pipeline —
kind `mcp.call`, resource `NAME/TOOL`, on behalf of the publisher — so the
policy (rules, interceptors, budgets, asking a person) decides it, and the
audit trail records it; the token is used at once (single use). Publishing
on `tools.mcp.NAME` is the grant; the pipeline decides each call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from astrid_runtime.approval.pipeline import Action, ApprovalPipeline
from astrid_runtime.bus import Bus, Message, Tap
from astrid_runtime.bus.topics import validate_topic
from astrid_runtime.errors import BusError, Refusal
from astrid_runtime.kernel import Kernel
from astrid_runtime.tomlfile import TomlDoc

CONFIG_FILE = "mcp-servers.toml"
KIND = "mcp.call"
REPLY_TOPIC = "agent.response"
#: Calls in flight per server; more wait (a call may wait for a person).
MAX_CALLS = 8
#: Starting a server and listing its tools (a Python server imports its SDK: seconds).
START_TIMEOUT_S = 60.0
#: One tool call, once approved.
CALL_TIMEOUT_S = 120.0

log = logging.getLogger("astrid.kernel.mcp")


@dataclass(frozen=True)
class McpServerConfig:
    name: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def topic(self) -> str:
        return f"tools.mcp.{self.name}"


def load_servers(path: Path) -> tuple[McpServerConfig, ...]:
    """The servers configured in `path` (none when it does not exist); `ConfigError`
    naming the line otherwise."""
    if not path.exists():
        return ()
    doc = TomlDoc.load(path)
    doc.unknown_keys(doc.data, {"server"})
    servers = doc.get(doc.data, "server", list, [])
    out: list[McpServerConfig] = []
    for i, table in enumerate(servers):
        if not isinstance(table, dict):
            raise doc.fail("each [[server]] must be a table", "server", None, i)
        doc.unknown_keys(table, {"name", "command", "env"}, "server", i)
        name = doc.get(table, "name", str, None, table_name="server", index=i)
        command = doc.string_list(table, "command", table_name="server", index=i)
        env = doc.get(table, "env", dict, {}, table_name="server", index=i)
        if name is None or not command:
            raise doc.fail("a server needs a name and a command", "server", None, i)
        try:
            validate_topic(f"tools.mcp.{name}")
        except BusError:
            raise doc.fail(f"name {name!r} is not one topic token", "server", "name",
                           i) from None
        if "." in name or any(n.name == name for n in out):
            raise doc.fail(f"name {name!r}: one token, unique", "server", "name", i)
        if not all(isinstance(v, str) for v in env.values()):
            raise doc.fail("env values must be strings", "server", "env", i)
        out.append(McpServerConfig(name, command, dict(env)))
    return tuple(out)


@dataclass(frozen=True)
class ToolRequest:
    request_id: str | None
    tool: str | None  # None: list the tools
    arguments: dict[str, Any]


def request_id_of(payload: bytes) -> str | None:
    """The `id` a request names, if any (read even from a request that is otherwise bad,
    so its refusal can say what it answers)."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return str(body["id"]) if isinstance(body, dict) and "id" in body else None


def parse_request(payload: bytes) -> ToolRequest:
    """The request in a `tools.mcp.NAME` payload, or `Refusal('invalid')`."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise Refusal("invalid", 'want JSON {"tool", "arguments", "id"} or {"list": true}')
    request_id = str(body["id"]) if "id" in body else None
    if body.get("list") is True:
        return ToolRequest(request_id, None, {})
    tool, arguments = body.get("tool"), body.get("arguments", {})
    if not isinstance(tool, str) or not tool or not isinstance(arguments, dict):
        raise Refusal("invalid", '"tool" must be a name and "arguments" an object')
    return ToolRequest(request_id, tool, arguments)


def result_text(result: Any) -> str:
    """An MCP tool result as text: its text blocks, else its structured content."""
    texts = [block.text for block in result.content if getattr(block, "type", "") == "text"]
    if texts:
        return "\n".join(texts)
    structured = getattr(result, "structured_content", None)
    return json.dumps(structured) if structured is not None else ""


class McpToolProvider:
    """One configured MCP server, its tools served on the bus under the approval pipeline."""

    def __init__(self, bus: Bus, pipeline: ApprovalPipeline, config: McpServerConfig):
        self.bus = bus
        self.pipeline = pipeline
        self.config = config
        self.plugin = f"mcp:{config.name}"

    def _reply(self, request_id: str | None, ok: bool, text: str) -> None:
        body: dict[str, Any] = {"text": text, "ok": ok, "plugin": self.plugin}
        if request_id is not None:
            body["in_reply_to"] = request_id
        with contextlib.suppress(BusError):  # a full mailbox drops it; the audit keeps it
            self.bus.publish(None, REPLY_TOPIC, json.dumps(body).encode(), origin="kernel")

    def _approve(self, publisher: str, tool: str) -> None:
        """Blocking (it may wait for a person): run in a worker thread."""
        resource = f"{self.config.name}/{tool}"
        token = self.pipeline.request(Action(publisher, KIND, resource), (KIND,))
        self.pipeline.check_token(token.token, plugin=publisher, kind=KIND, resource=resource)

    async def _handle(self, session: Any, tools: list[dict[str, Any]], message: Message,
                      limiter: trio.CapacityLimiter) -> None:
        request_id = request_id_of(message.payload)
        try:
            request = parse_request(message.payload)
            if request.tool is None:
                self._reply(request_id, True, json.dumps(tools))
                return
            async with limiter:
                await trio.to_thread.run_sync(self._approve, message.publisher, request.tool,
                                              abandon_on_cancel=True)
                with trio.fail_after(CALL_TIMEOUT_S):
                    result = await session.call_tool(request.tool, request.arguments)
        except Refusal as e:
            self._reply(request_id, False, f"mcp {self.config.name}: refused ({e.kind}): "
                        f"{e.message}")
            return
        except trio.TooSlowError:
            self._reply(request_id, False, f"mcp {self.config.name}: no answer within "
                        f"{CALL_TIMEOUT_S:g}s")
            return
        except Exception as e:  # the server's failure, not the kernel's
            self._reply(request_id, False, f"mcp {self.config.name}: {e}")
            return
        self.pipeline.audit.record("mcp.call", {"plugin": message.publisher,
                                                "server": self.config.name,
                                                "tool": request.tool,
                                                "ok": not result.is_error})
        self._reply(request_id, not result.is_error, result_text(result))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Start the server, list its tools, serve requests until cancelled. A server
        that will not start is logged and left out; it never takes the kernel down."""
        from mcp import ClientSession, StdioServerParameters, stdio_client

        params = StdioServerParameters(command=self.config.command[0],
                                       args=list(self.config.command[1:]),
                                       env={"PATH": os.environ.get("PATH", ""),
                                            **self.config.env})
        tap = Tap(self.bus, self.config.topic)
        started, why = False, "it exited"
        try:
            try:
                async with stdio_client(params, errlog=sys.stderr) as (read, write), \
                        ClientSession(read, write) as session:
                    with trio.fail_after(START_TIMEOUT_S):
                        await session.initialize()
                        listed = await session.list_tools()
                    tools = [{"name": t.name, "description": t.description or "",
                              "input_schema": t.input_schema} for t in listed.tools]
                    log.info("mcp server %s: %d tools on %s", self.config.name, len(tools),
                             self.config.topic)
                    task_status.started()
                    started = True
                    limiter = trio.CapacityLimiter(MAX_CALLS)
                    async with trio.open_nursery() as calls:
                        while True:
                            message = await tap.receive()
                            calls.start_soon(self._handle, session, tools, message, limiter)
            except Exception as e:  # a server that fails is its own problem, not the kernel's
                why = str(e) or type(e).__name__
                log.warning("mcp server %s stopped: %s", self.config.name, why)
            if not started:
                task_status.started()
            while True:  # never leave a caller waiting for a server that is gone
                message = await tap.receive()
                self._reply(request_id_of(message.payload), False,
                            f"mcp {self.config.name}: the server is not running ({why})")
        finally:
            tap.close()


async def start_providers(kernel: Kernel, pipeline: ApprovalPipeline, home: Path) -> int:
    """Start every server in $ASTRID_HOME/mcp-servers.toml as a kernel service; how many.
    Raises `ConfigError` (naming the line) for a bad file."""
    servers = load_servers(home / CONFIG_FILE)
    for server in servers:
        await kernel.start_service(McpToolProvider(kernel.bus, pipeline, server).serve)
    return len(servers)


__all__ = ["CONFIG_FILE", "KIND", "McpServerConfig", "McpToolProvider", "load_servers",
           "parse_request", "result_text", "start_providers"]
