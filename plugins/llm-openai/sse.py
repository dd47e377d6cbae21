"""Server-sent events of a streamed chat completion, put back together.

`parse_events` splits a byte buffer into complete `data:` payloads and the
rest; `Completion.feed` accumulates content deltas and tool-call fragments
(indexed; `function.arguments` arrives in pieces) as the OpenAI API,
vLLM, Ollama and llama.cpp's server send them.
"""

from __future__ import annotations

import json
from typing import Any


def parse_events(buffer: bytes) -> tuple[list[str], bytes]:
    """Complete events' `data` fields, and the incomplete tail to keep."""
    normalized = buffer.replace(b"\r\n", b"\n")
    *complete, rest = normalized.split(b"\n\n")
    events = []
    for raw in complete:
        data = [line[5:].lstrip() for line in raw.decode("utf-8", "replace").split("\n")
                if line.startswith("data:")]
        if data:
            events.append("\n".join(data))
    return events, rest


class Completion:
    """The assistant message being streamed."""

    def __init__(self) -> None:
        self.content = ""
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.usage: Any = None
        self.done = False

    def feed(self, events: list[str]) -> str:
        """Take events in; the new text they carried."""
        text = ""
        for event in events:
            if event.strip() == "[DONE]":
                self.done = True
                continue
            chunk = json.loads(event)
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    text += delta["content"]
                for call in delta.get("tool_calls") or []:
                    self._tool_call(call)
        self.content += text
        return text

    def _tool_call(self, call: dict[str, Any]) -> None:
        slot = self.tool_calls.setdefault(int(call.get("index", 0)), {
            "id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if call.get("id"):
            slot["id"] = call["id"]
        function = call.get("function") or {}
        slot["function"]["name"] += function.get("name") or ""
        slot["function"]["arguments"] += function.get("arguments") or ""

    def message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            out["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return out
