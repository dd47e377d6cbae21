"""The file tool, asked over the kernel bus: what `astrid mcp` calls.

The pinned `filetool` plugin takes text commands on `tools.fs` (`write PATH
TEXT`, `replace PATH OLD NEW`, ...) as JSON `{"text", "id"}` and answers on
`agent.response` with `in_reply_to` set to that id. This module builds those
commands from typed arguments (pure: `command`) and waits for the matching
answer (`FileToolClient`). It knows nothing of MCP, and nothing of paths
beyond refusing the ones the plugin's text protocol cannot carry: whether a
path stays inside the workspace is the kernel's VFS's call, not ours.
"""

from __future__ import annotations

import itertools
import json
import shlex
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import trio

from astrid_runtime.bus import Bus, Tap
from astrid_runtime.errors import BusError, KernelError

REQUEST_TOPIC = "tools.fs"
REPLY_TOPIC = "agent.response"


class ToolRequestError(KernelError):
    """Arguments the file tool's text protocol cannot carry (one line for the caller)."""


@dataclass(frozen=True)
class ToolReply:
    """The file tool's (or the kernel commit path's) answer to one request."""

    ok: bool
    text: str
    #: Who answered: "filetool", or "kernel" for a commit.
    plugin: str


def _path(path: str, what: str = "path") -> str:
    # The plugin splits `write PATH TEXT` at the first whitespace: a path with
    # whitespace (or none at all) would be read as something else.
    if not path or any(c.isspace() for c in path):
        raise ToolRequestError(f"{what} {path!r}: must be non-empty, without whitespace")
    return path


def _text(text: str) -> str:
    if not text.strip():
        raise ToolRequestError("content must not be empty")
    return text


def command(verb: str, *args: str) -> str:
    """The file tool's text command for `verb` with `args`; `ToolRequestError` if the
    arguments cannot be said in its protocol."""
    if verb in ("write", "append"):
        path, text = args
        return f"{verb} {_path(path)} {_text(text)}"
    if verb == "replace":
        path, old, new = args
        if not old:
            raise ToolRequestError("old text must not be empty")
        return "replace " + " ".join(shlex.quote(a) for a in (_path(path), old, new))
    if verb == "cat":
        return f"cat {_path(args[0])}"
    if verb == "ls":
        return f"ls {_path(args[0])}" if args and args[0] not in ("", ".") else "ls"
    if verb == "commit":
        return " ".join(["commit", *(_path(p) for p in args)])
    raise ToolRequestError(f"unknown file tool verb {verb!r}")


class FileToolClient:
    """Sends requests to the file tool and hands each caller its own answer.

    `publish` is `kernel.publish`: requests go out as the client, like
    `astrid publish tools.fs ...` (the file tool's grants, not ours, bound them).

    One tap on `agent.response` (attached before the plugins boot, so no
    answer can slip past it) and a routing task (`serve`) that wakes the
    caller whose id an answer names; answers to others are ignored.
    """

    def __init__(self, bus: Bus, publish: Callable[[str, bytes], int]):
        self._tap = Tap(bus, REPLY_TOPIC)
        self._publish = publish
        self._waiting: dict[str, trio.MemorySendChannel[ToolReply]] = {}
        self._serial = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:12]

    async def serve(self) -> None:
        """Route answers to their callers until cancelled (then detach the tap)."""
        try:
            while True:
                message = await self._tap.receive()
                try:
                    body = json.loads(message.payload)
                except (ValueError, UnicodeDecodeError):
                    continue
                if not isinstance(body, dict):
                    continue
                waiter = self._waiting.pop(str(body.get("in_reply_to")), None)
                if waiter is not None:
                    waiter.send_nowait(ToolReply(body.get("ok") is True,
                                                 str(body.get("text", "")),
                                                 str(body.get("plugin", message.publisher))))
        finally:
            self._tap.close()

    async def ask(self, text: str, timeout_s: float) -> ToolReply:
        """Send one command; its answer, or `ToolRequestError` when none comes in time."""
        request_id = f"mcp-{self._prefix}-{next(self._serial)}"
        send, receive = trio.open_memory_channel[ToolReply](1)
        self._waiting[request_id] = send
        try:
            try:
                taken = self._publish(REQUEST_TOPIC,
                                      json.dumps({"text": text, "id": request_id}).encode())
            except BusError as e:
                raise ToolRequestError(f"request refused by the bus: {e.message}") from None
            if taken == 0:  # nobody subscribed, or its mailbox is full: no answer will come
                raise ToolRequestError("the file tool did not take the request (not running, "
                                       "or busy: its mailbox is full); try again")
            with trio.move_on_after(timeout_s):
                return await receive.receive()
        finally:
            self._waiting.pop(request_id, None)
        raise ToolRequestError(f"no answer from the file tool within {timeout_s:g}s "
                               "(is the filetool plugin pinned and running?)")


__all__ = ["FileToolClient", "ToolReply", "ToolRequestError", "command"]
