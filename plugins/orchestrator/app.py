"""The agent loop: user input -> model -> tool calls over the bus -> results -> model.

    user.input       from a person (`client`): starts a turn
    llm.PROVIDER.chat {"id", "messages", "tools"} to the provider plugin
    llm.response     the model's message: tool calls, or the answer
    tools.fs         each `fs` tool call, as {"text": COMMAND, "id"}
    agent.response   the file tool's result, or the kernel's for a commit
                     (matched by `in_reply_to`), and
                     this plugin's answer to the person

Everything the tools do goes through the kernel: the file tool edits only
the session (vfs), a commit asks for approval (`fs.commit`), and every
model request is a `net.http` action the approval pipeline decides, with
its declared tokens counted by the policy's budget. One turn at a time; a
turn ends with an answer, an error, or after `max_rounds` model calls.

Config: `provider` (default `openai`: the topic `llm.openai.chat`, answered
by the plugin `llm-openai`), `provider_plugin` (default `llm-PROVIDER`),
`system` (the system prompt), `max_rounds` (default 8).
"""

from __future__ import annotations

import json
from typing import Any

from astrid_sdk import Message, Plugin, bus, log

plugin = Plugin("orchestrator")

SYSTEM = ("You are Astrid, a coding agent working inside a sandboxed session of the "
          "user's project. Use the fs tool to read and change files; changes stay in "
          "the session until a person commits them. Answer briefly.")
FS_HELP = ("One file-tool command: write PATH TEXT | append PATH TEXT | "
           "replace PATH OLD NEW | cat PATH | ls [PATH] | mkdir PATH | mv FROM TO | "
           "rm PATH | commit [PATH ...]. Paths are relative to the project root; "
           "quote arguments with spaces shell-style.")
TOOLS = [{"type": "function", "function": {
    "name": "fs", "description": FS_HELP,
    "parameters": {"type": "object", "required": ["command"],
                   "properties": {"command": {"type": "string",
                                              "description": "e.g. write notes.txt hello"}}}}}]


class Turn:
    def __init__(self, number: int, text: str, reply_id: Any, system: str) -> None:
        self.number = number
        self.reply_id = reply_id
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system},
                                               {"role": "user", "content": text}]
        self.rounds = 0
        #: bus request id -> the model's tool_call id, for calls still running
        self.pending: dict[str, str] = {}
        self.asked = ""


STATE: dict[str, Any] = {"turn": None, "count": 0}


def _cfg() -> dict[str, Any]:
    cfg = plugin.config_json()
    provider = str(cfg.get("provider", "openai"))
    return {"provider": provider,
            "provider_plugin": str(cfg.get("provider_plugin", f"llm-{provider}")),
            "system": str(cfg.get("system", SYSTEM)),
            "max_rounds": int(cfg.get("max_rounds", 8))}


def _answer(turn: Turn, text: str, **fields: Any) -> None:
    STATE["turn"] = None
    extra = {"in_reply_to": turn.reply_id} if turn.reply_id is not None else {}
    plugin.respond(text, **extra, **fields)


def _ask_model(turn: Turn) -> None:
    cfg = _cfg()
    if turn.rounds >= cfg["max_rounds"]:
        _answer(turn, f"stopped after {turn.rounds} model calls without an answer", ok=False)
        return
    turn.rounds += 1
    turn.asked = f"turn-{turn.number}-{turn.rounds}"
    bus.publish(f"llm.{cfg['provider']}.chat",
                {"id": turn.asked, "messages": turn.messages, "tools": TOOLS})


@plugin.on("user.input")
def user_input(msg: Message) -> None:
    if not msg.sent_by("client"):
        log.warn("user.input ignored: not from a person")
        return
    if STATE["turn"] is not None:
        plugin.respond("still working on the last request; wait for its answer", ok=False)
        return
    reply_id = None
    try:
        body = msg.json()
        if isinstance(body, dict):
            reply_id = body.get("id")
    except ValueError:
        pass
    STATE["count"] += 1
    turn = Turn(STATE["count"], msg.text, reply_id, _cfg()["system"])
    STATE["turn"] = turn
    _ask_model(turn)


def _run_tool(turn: Turn, call: dict[str, Any]) -> None:
    function = call.get("function") or {}
    call_id = str(call.get("id") or f"call-{len(turn.pending)}")
    try:
        args = json.loads(function.get("arguments") or "{}")
    except ValueError:
        args = {}
    command = args.get("command") if isinstance(args, dict) else None
    if function.get("name") != "fs" or not isinstance(command, str):
        turn.messages.append({"role": "tool", "tool_call_id": call_id,
                              "content": f"unknown tool or bad arguments; {FS_HELP}"})
        return
    request_id = f"{turn.asked}:{call_id}"
    turn.pending[request_id] = call_id
    bus.publish("tools.fs", {"text": command, "id": request_id})


@plugin.on("llm.response")
def model_answered(msg: Message) -> None:
    turn = STATE["turn"]
    reply = msg.json()
    if (turn is None or not msg.sent_by(_cfg()["provider_plugin"])
            or not isinstance(reply, dict) or reply.get("in_reply_to") != turn.asked):
        return
    if reply.get("error"):
        _answer(turn, f"model call failed: {reply['error']}", ok=False)
        return
    message = reply.get("message") or {}
    calls = message.get("tool_calls") or []
    if not calls:
        _answer(turn, str(message.get("content") or ""), ok=True, usage=reply.get("usage"))
        return
    turn.messages.append({"role": "assistant", "content": message.get("content"),
                          "tool_calls": calls})
    for call in calls:
        _run_tool(turn, call)
    if not turn.pending:
        _ask_model(turn)


@plugin.on("agent.response")
def tool_answered(msg: Message) -> None:
    turn = STATE["turn"]
    # The file tool answers itself, except a commit: the kernel's commit path does.
    if turn is None or not msg.sent_by("filetool", "kernel"):
        return
    reply = msg.json()
    request_id = reply.get("in_reply_to") if isinstance(reply, dict) else None
    call_id = turn.pending.pop(request_id, None) if isinstance(request_id, str) else None
    if call_id is None:
        return
    turn.messages.append({"role": "tool", "tool_call_id": call_id,
                          "content": str(reply.get("text", ""))})
    if not turn.pending:
        _ask_model(turn)


WitWorld = plugin.world()  # componentize-py exports this class: keep it last
