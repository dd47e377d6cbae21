"""`Plugin`: handlers by topic pattern, turned into the component's exports.

A plugin module builds one `Plugin`, registers handlers with `@plugin.on`,
and ends with `WitWorld = plugin.world()`; componentize-py finds that class
and exports its `init` and `on_message`.

Failure model: a handler that raises does not trap the component. The
exception becomes the export's `err(string)`, which the kernel logs as a
refusal while the plugin keeps serving; only a real trap (or fuel, time or
memory running out) is a crash.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wit_world
from componentize_py_types import Err

from astrid_sdk import bus, log
from astrid_sdk.bus import Sender
from astrid_sdk.codec import decode_json, decode_text
from astrid_sdk.topics import matches

#: Where replies meant for the person go.
RESPONSE_TOPIC = "agent.response"


@dataclass(frozen=True)
class Message:
    """One delivered message, with its sender as the kernel saw it."""

    topic: str
    payload: bytes
    #: Stamped by the kernel; None only for a message built by hand (tests).
    sender: Sender | None = None

    def sent_by(self, *plugins: str) -> bool:
        """True when a publisher named in `plugins` sent it (on any kernel)."""
        return self.sender is not None and self.sender.plugin in plugins

    @property
    def text(self) -> str:
        """The payload as UTF-8 text; a JSON object's `text` field if it has one."""
        body = decode_text(self.payload)
        if body.startswith("{"):
            try:
                parsed = json.loads(body)
            except ValueError:
                return body
            text = parsed.get("text") if isinstance(parsed, dict) else None
            if isinstance(text, str):
                return text
        return body

    def json(self) -> Any:
        """The payload parsed as JSON (`ValueError` if it is not)."""
        return decode_json(self.payload)


Handler = Callable[[Message], None]
InitHook = Callable[[str], None]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Plugin:
    """A plugin's handlers and hooks; one per plugin module."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: The manifest's `config` string, set before the init hooks run.
        self.config = ""
        self._handlers: list[tuple[str, Handler]] = []
        self._init_hooks: list[InitHook] = []

    def on(self, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator: call the function for messages matching `pattern`.

        `init` subscribes to every registered pattern; the first handler
        (in registration order) whose pattern matches a topic gets it.
        """

        def register(handler: Handler) -> Handler:
            self._handlers.append((pattern, handler))
            return handler

        return register

    def on_init(self, hook: InitHook) -> InitHook:
        """Decorator: call `hook(config)` once, after the subscriptions are made."""
        self._init_hooks.append(hook)
        return hook

    def config_json(self) -> dict[str, Any]:
        """The config string parsed as a JSON object; `{}` when empty."""
        if not self.config.strip():
            return {}
        parsed = json.loads(self.config)
        if not isinstance(parsed, dict):
            raise ValueError("config must be a JSON object")
        return parsed

    def respond(self, text: str, **fields: Any) -> None:
        """Publish `{"text": ..., "plugin": NAME, **fields}` on `agent.response`."""
        bus.publish(RESPONSE_TOPIC, {"text": text, "plugin": self.name, **fields})

    def handler_for(self, topic: str) -> Handler | None:
        """The handler that gets `topic`, if any."""
        for pattern, handler in self._handlers:
            if matches(pattern, topic):
                return handler
        return None

    def start(self, config: str) -> None:
        """The `init` export: subscribe to every handler pattern, run init hooks."""
        self.config = config
        try:
            for pattern in dict.fromkeys(p for p, _ in self._handlers):
                bus.subscribe(pattern)
            for hook in self._init_hooks:
                hook(config)
        except Exception as e:
            raise Err(f"{self.name}: init failed: {_describe(e)}") from None

    def deliver(self, topic: str, payload: bytes) -> None:
        """The `on-message` export: run the matching handler."""
        handler = self.handler_for(topic)
        if handler is None:
            log.debug("no handler for topic", topic=topic)
            return
        try:
            handler(Message(topic, bytes(payload), bus.sender()))
        except Exception as e:
            log.error("handler failed", topic=topic, error=_describe(e))
            raise Err(f"{self.name}: {topic}: {_describe(e)}") from None

    def world(self) -> type:
        """The class componentize-py exports; assign it to `WitWorld` in the app module."""
        plugin = self

        class WitWorld(wit_world.WitWorld):  # type: ignore[misc]
            def init(self, config: str) -> None:
                plugin.start(config)

            def on_message(self, topic: str, payload: bytes) -> None:
                plugin.deliver(topic, payload)

        return WitWorld


__all__ = ["RESPONSE_TOPIC", "Handler", "InitHook", "Message", "Plugin"]
