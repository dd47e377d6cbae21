"""An OpenAI-compatible chat-completions client, over the kernel's `http` import.

    llm.openai.chat   {"id", "messages": [...], "tools": [...]?, "model"?}
    llm.response      {"in_reply_to", "provider": "openai", "message": {"role":
                       "assistant", "content", "tool_calls"?}, "usage"?}
                      or {"in_reply_to", "provider", "error": "..."}
    llm.delta         {"in_reply_to", "text"}: streamed text as it arrives

Config (the manifest's JSON, or `astrid run --endpoint/--model`): `endpoint`
(the API base, `.../v1`), `model`, `stream` (default true), `max_tokens`.
No key: the kernel adds its configured secret to requests for the
endpoint's host after the approval pipeline saw them. Each request declares
`cost.tokens` (an estimate of the prompt plus `max_tokens`) so a token
budget in the policy file is enforced by the kernel before anything is sent.
"""

from __future__ import annotations

import json
from typing import Any

from astrid_sdk import HostError, Message, Plugin, bus
from astrid_sdk._host import host_call
from sse import Completion, parse_events
from wit_world.imports import http

plugin = Plugin("llm-openai")
PROVIDER = "openai"
#: Characters per token, for the declared cost (the kernel charges the estimate).
CHARS_PER_TOKEN = 4


def _settings() -> dict[str, Any]:
    cfg = plugin.config_json()
    return {"endpoint": str(cfg.get("endpoint", "http://127.0.0.1:11434/v1")).rstrip("/"),
            "model": str(cfg.get("model", "llama3.2")),
            "stream": bool(cfg.get("stream", True)),
            "max_tokens": int(cfg.get("max_tokens", 1024))}


def _reply(request_id: Any, **fields: Any) -> None:
    bus.publish("llm.response", {"in_reply_to": request_id, "provider": PROVIDER, **fields})


def _send(body: dict[str, Any], max_tokens: int, url: str) -> Any:
    payload = json.dumps(body).encode()
    estimate = len(payload) // CHARS_PER_TOKEN + max_tokens
    request = http.Request(method="POST", url=url,
                           headers=[("content-type", "application/json"),
                                    ("accept", "text/event-stream, application/json")],
                           body=payload,
                           details=[("cost.tokens", str(estimate)),
                                    ("model", str(body.get("model", "")))])
    return host_call(http.send, request)


def _read_all(response: Any) -> bytes:
    out = b""
    with response.body as body:
        while chunk := host_call(body.read):
            out += chunk
    return out


def _stream(response: Any, request_id: Any) -> Completion:
    completion = Completion()
    buffer = b""
    with response.body as body:
        while chunk := host_call(body.read):
            events, buffer = parse_events(buffer + chunk)
            text = completion.feed(events)
            if text:
                bus.publish("llm.delta", {"in_reply_to": request_id, "text": text})
            if completion.done:
                break
    return completion


@plugin.on("llm.openai.chat")
def chat(msg: Message) -> None:
    request = msg.json()
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        raise ValueError("llm.openai.chat wants {\"id\", \"messages\": [...]}")
    request_id = request.get("id")
    cfg = _settings()
    body: dict[str, Any] = {"model": request.get("model") or cfg["model"],
                            "messages": request["messages"], "stream": cfg["stream"],
                            "max_tokens": cfg["max_tokens"]}
    if request.get("tools"):
        body["tools"] = request["tools"]
    try:
        response = _send(body, cfg["max_tokens"], cfg["endpoint"] + "/chat/completions")
    except HostError as e:
        _reply(request_id, error=f"{e.kind}: {e.reason}")
        return
    if response.status != 200:
        detail = _read_all(response)[:500].decode("utf-8", "replace")
        _reply(request_id, error=f"the model server answered {response.status}: {detail}")
        return
    content_type = dict((k.lower(), v) for k, v in response.headers).get("content-type", "")
    if "text/event-stream" in content_type:
        completion = _stream(response, request_id)
        _reply(request_id, message=completion.message(), usage=completion.usage)
        return
    answer = json.loads(_read_all(response))
    choice = (answer.get("choices") or [{}])[0]
    _reply(request_id, message=choice.get("message", {}), usage=answer.get("usage"))


WitWorld = plugin.world()  # componentize-py exports this class: keep it last
