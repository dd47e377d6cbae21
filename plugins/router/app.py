"""The router plugin: rule-based replies to `user.input`.

    help                 what it can do
    hello | hi           a greeting (from the manifest's config)
    echo TEXT            TEXT back
    note TEXT            store a note          -> notes.add
    notes                list the notes        -> notes.list
    forget N             delete note N         -> notes.delete
    count TEXT           words, lines, chars   -> tools.wordcount
    write|append|replace|cat|ls|mkdir|mv|rm|commit ...
                         workspace files       -> tools.fs

A `user.input` payload is text, or JSON `{"text": ..., "id": ...}`; replies
carry `in_reply_to` when the input had an `id`. Anything forwarded is
answered on `agent.response` by the plugin that handles it.

Only a person types `user.input`: input whose kernel-stamped sender is not
the client (`astrid publish`, `astrid run`) is ignored and logged, so a
plugin that may publish there cannot make the router act for it.
"""

from __future__ import annotations

from typing import Any

from astrid_sdk import Message, Plugin, bus, log

plugin = Plugin("router")

HELP = "\n".join([
    "Commands:",
    "  help          this text",
    "  echo TEXT     say TEXT back",
    "  note TEXT     remember TEXT",
    "  notes         list what I remember",
    "  forget N      forget note N",
    "  count TEXT    count words, lines and characters in TEXT",
    "  write PATH TEXT | append PATH TEXT | replace PATH OLD NEW",
    "  cat PATH | ls [PATH] | mkdir PATH | mv FROM TO | rm PATH",
    "                edit the session's workspace (the file tool)",
    "  commit [PATH ...]  ask to commit the session (needs approval)",
])

FILE_VERBS = ("write", "append", "replace", "cat", "ls", "mkdir", "mv", "rm", "commit")

_greeting = "Hello!"


@plugin.on_init
def configure(config: str) -> None:
    global _greeting
    _greeting = str(plugin.config_json().get("greeting", _greeting))


def _request_id(msg: Message) -> dict[str, Any]:
    try:
        body = msg.json()
    except ValueError:
        return {}
    if isinstance(body, dict) and "id" in body:
        return {"in_reply_to": body["id"]}
    return {}


#: Publishers whose `user.input` the router obeys (a person, through the client).
PEOPLE = ("client",)


@plugin.on("user.input")
def route(msg: Message) -> None:
    if not msg.sent_by(*PEOPLE):
        who = msg.sender.plugin if msg.sender is not None else "unknown"
        log.warn("user.input ignored: not from a person", sender=who)
        return
    words = msg.text.strip().split(maxsplit=1)
    verb = words[0].lower() if words else ""
    rest = words[1].strip() if len(words) > 1 else ""
    reply_to = _request_id(msg)
    if verb in ("", "help", "?"):
        plugin.respond(HELP, **reply_to)
    elif verb in ("hello", "hi", "hey"):
        plugin.respond(_greeting, **reply_to)
    elif verb == "echo":
        plugin.respond(rest, **reply_to)
    elif verb == "note" and rest:
        bus.publish("notes.add", {"text": rest, **reply_to})
    elif verb == "notes" or (verb == "note" and not rest):
        bus.publish("notes.list", {**reply_to})
    elif verb == "forget" and rest:
        bus.publish("notes.delete", {"id": rest, **reply_to})
    elif verb == "count":
        bus.publish("tools.wordcount", rest)
    elif verb in FILE_VERBS:
        bus.publish("tools.fs", msg.text)
    else:
        plugin.respond(f"I don't know how to {verb!r}. Type `help`.", **reply_to)


WitWorld = plugin.world()
