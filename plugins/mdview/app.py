"""mdview: Markdown to HTML, by calling another plugin written in another language.

    tools.markdown   TEXT, or {"text": ..., "id": ...}   -> agent.response
                     {"text": HTML, "plugin": "mdview", "in_reply_to": id?}

It parses no Markdown itself: it imports `astrid:markdown/render@0.1.0`, and
the kernel links that import at boot to the C component in plugins/markdown,
which runs in its own Store. If the renderer crashes or runs out of time,
this plugin gets an error value (answered as `"error": true`) and keeps
serving; the kernel rebuilds the renderer for the next call.
"""

from __future__ import annotations

from typing import Any

from componentize_py_types import Err
from wit_world.imports import render

from astrid_sdk import Message, Plugin

plugin = Plugin("mdview")


@plugin.on("tools.markdown")
def to_html(msg: Message) -> None:
    fields: dict[str, Any] = {}
    try:
        body = msg.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "id" in body:
        fields["in_reply_to"] = body["id"]
    try:
        plugin.respond(render.to_html(msg.text), **fields)
    except Err as e:
        plugin.respond(f"markdown: {e.value}", error=True, **fields)


WitWorld = plugin.world()
