"""The notes plugin: add, list and delete notes, kept in kv.

    notes.add     {"text": "..."} or plain text   -> "Noted (#N)."
    notes.list    anything                        -> every note, oldest first
    notes.delete  {"id": N} or "N"                -> "Forgot note N."

Replies go to `agent.response` as JSON `{"text", "plugin": "notes", ...}`
(with `notes` listing `{"id", "text"}` for `notes.list`, `note` the id for
add and delete, `in_reply_to` when the request carried an `id`).

Keyspace: `seq` holds the last id used; note N lives at `note/` + N padded
to 8 digits, so kv's sorted `list` returns them oldest first.

Writes (`notes.add`, `notes.delete`) are taken only from the router and the
client, by the sender the kernel stamped on the message: another plugin
granted those topics still cannot write into this keyspace.
"""

from __future__ import annotations

from typing import Any

from astrid_sdk import Message, Plugin, kv, log

plugin = Plugin("notes")

PREFIX = "note/"


def _key(note_id: int) -> str:
    return f"{PREFIX}{note_id:08d}"


def _body(msg: Message) -> dict[str, Any]:
    try:
        body = msg.json()
    except ValueError:
        return {"text": msg.text}
    return body if isinstance(body, dict) else {"text": str(body)}


#: Who may change the notes (kernel-stamped sender names, on any verified kernel).
WRITERS = ("router", "client")


def _may_write(msg: Message) -> bool:
    if msg.sent_by(*WRITERS):
        return True
    who = msg.sender.plugin if msg.sender is not None else "unknown"
    log.warn("write ignored: sender may not change notes", topic=msg.topic, sender=who)
    return False


def _reply_to(body: dict[str, Any]) -> dict[str, Any]:
    return {"in_reply_to": body["in_reply_to"]} if "in_reply_to" in body else {}


@plugin.on("notes.add")
def add(msg: Message) -> None:
    if not _may_write(msg):
        return
    body = _body(msg)
    text = str(body.get("text", "")).strip()
    if not text:
        plugin.respond("Nothing to note.", **_reply_to(body))
        return
    note_id = int(kv.get_json("seq", 0)) + 1
    kv.set(_key(note_id), text)
    kv.set("seq", note_id)
    plugin.respond(f"Noted (#{note_id}).", note=note_id, **_reply_to(body))


@plugin.on("notes.list")
def list_notes(msg: Message) -> None:
    body = _body(msg)
    notes = []
    for key in kv.keys(PREFIX):
        text = kv.get_text(key)
        if text is not None:
            notes.append({"id": int(key.removeprefix(PREFIX)), "text": text})
    if notes:
        lines = [f"{n['id']}. {n['text']}" for n in notes]
        plugin.respond("\n".join(lines), notes=notes, **_reply_to(body))
    else:
        plugin.respond("No notes yet.", notes=[], **_reply_to(body))


@plugin.on("notes.delete")
def delete(msg: Message) -> None:
    if not _may_write(msg):
        return
    body = _body(msg)
    raw = str(body.get("id", body.get("text", ""))).strip().lstrip("#")
    if not raw.isdigit():
        plugin.respond(f"Which note? {raw!r} is not a note number.", **_reply_to(body))
        return
    note_id = int(raw)
    if kv.delete(_key(note_id)):
        plugin.respond(f"Forgot note {note_id}.", note=note_id, **_reply_to(body))
    else:
        plugin.respond(f"There is no note {note_id}.", note=note_id, **_reply_to(body))


WitWorld = plugin.world()
