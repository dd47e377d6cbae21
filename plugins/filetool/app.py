"""The file tool: edits the session's workspace on request, through vfs handles.

    write PATH TEXT          create or replace PATH with TEXT (and a newline)
    append PATH TEXT         add TEXT (and a newline) to the end of PATH
    replace PATH OLD NEW     replace every OLD with NEW in PATH (shell quoting)
    cat PATH                 show PATH
    ls [PATH]                list a directory
    mkdir PATH               make a directory (and its parents)
    mv FROM TO               rename
    rm PATH                  remove a file or an empty directory
    commit [PATH ...]        ask to commit the session (`fs.commit` approval),
                             then hand the token to the kernel's commit path

Requests arrive on `tools.fs` as text, or JSON `{"text": ..., "id": ...}`;
replies go to `agent.response` (`{"text", "plugin": "filetool", "ok", ...}`
with `in_reply_to` when the request had an `id`). Every path is relative
to the workspace root and resolved by the kernel beneath it: `..`,
absolute paths and symlinks pointing out are refused there, not here.
"""

from __future__ import annotations

import shlex
from typing import Any

from astrid_sdk import HostError, Message, Plugin, bus
from astrid_sdk._host import host_call
from wit_world.imports import cap, vfs

plugin = Plugin("filetool")

CHUNK = 64 * 1024
MAX_SHOW = 16 * 1024
WRITE = vfs.OpenFlags.WRITE | vfs.OpenFlags.CREATE | vfs.OpenFlags.TRUNCATE
APPEND = vfs.OpenFlags.APPEND | vfs.OpenFlags.CREATE
USAGE = ("file commands: write PATH TEXT | append PATH TEXT | replace PATH OLD NEW | "
         "cat PATH | ls [PATH] | mkdir PATH | mv FROM TO | rm PATH | commit [PATH ...]")


class Usage(Exception):
    pass


def _request(msg: Message) -> tuple[str, dict[str, Any]]:
    try:
        body = msg.json()
    except ValueError:
        return msg.text, {}
    if isinstance(body, dict):
        extra = {"in_reply_to": body["id"]} if "id" in body else {}
        return str(body.get("text", "")), extra
    return msg.text, {}


def _root() -> Any:
    return host_call(vfs.root, "workspace")


def _read_all(d: Any, path: str) -> bytes:
    with host_call(d.open_file, path, vfs.OpenFlags.READ) as f:
        out = bytearray()
        while True:
            chunk = host_call(f.read, CHUNK)
            if not chunk:
                return bytes(out)
            out += chunk


def _write_all(d: Any, path: str, data: bytes, flags: Any) -> None:
    with host_call(d.open_file, path, flags) as f:
        view = memoryview(data)
        while view:
            n = host_call(f.write, bytes(view[:CHUNK]))
            view = view[n:]


def _parents(d: Any, path: str) -> None:
    parts = [p for p in path.split("/")[:-1] if p]
    for i in range(1, len(parts) + 1):
        try:
            host_call(d.mkdir, "/".join(parts[:i]))
        except HostError as e:
            if e.kind != "conflict":
                raise


def _line(text: str) -> bytes:
    return (text if text.endswith("\n") else text + "\n").encode()


def _path_and_text(rest: str) -> tuple[str, str]:
    parts = rest.split(maxsplit=1)
    if len(parts) < 2:
        raise Usage("need a path and some text")
    return parts[0], parts[1]


def write(d: Any, rest: str) -> str:
    path, text = _path_and_text(rest)
    _parents(d, path)
    _write_all(d, path, _line(text), WRITE)
    return f"Wrote {path} ({len(_line(text))} bytes)."


def append(d: Any, rest: str) -> str:
    path, text = _path_and_text(rest)
    _parents(d, path)
    _write_all(d, path, _line(text), APPEND)
    return f"Appended to {path}."


def replace(d: Any, rest: str) -> str:
    args = shlex.split(rest)
    if len(args) != 3:
        raise Usage("replace PATH OLD NEW (quote words with spaces)")
    path, old, new = args
    text = _read_all(d, path).decode("utf-8")
    count = text.count(old)
    if not count:
        return f"No {old!r} in {path}; nothing changed."
    _write_all(d, path, text.replace(old, new).encode(), WRITE)
    return f"Replaced {count} occurrence{'s' if count != 1 else ''} of {old!r} in {path}."


def cat(d: Any, rest: str) -> str:
    path = rest.strip()
    if not path:
        raise Usage("cat PATH")
    data = _read_all(d, path)
    shown = data[:MAX_SHOW].decode("utf-8", "replace")
    more = f"\n… ({len(data) - MAX_SHOW} more bytes)" if len(data) > MAX_SHOW else ""
    return shown + more


def ls(d: Any, rest: str) -> str:
    entries = host_call(d.list, rest.strip())
    marks = {vfs.EntryKind.DIRECTORY: "/", vfs.EntryKind.SYMLINK: "@"}
    names = [e.name + marks.get(e.kind, "") for e in entries]
    return "\n".join(names) if names else "(empty)"


def mkdir(d: Any, rest: str) -> str:
    path = rest.strip().rstrip("/")
    if not path:
        raise Usage("mkdir PATH")
    _parents(d, path + "/x")
    return f"Made {path}/."


def mv(d: Any, rest: str) -> str:
    args = shlex.split(rest)
    if len(args) != 2:
        raise Usage("mv FROM TO")
    _parents(d, args[1])
    host_call(d.rename, args[0], args[1])
    return f"Moved {args[0]} to {args[1]}."


def rm(d: Any, rest: str) -> str:
    path = rest.strip()
    if not path:
        raise Usage("rm PATH")
    host_call(d.remove, path)
    return f"Removed {path}."


def commit(rest: str, reply: dict[str, Any]) -> str | None:
    paths = shlex.split(rest)
    resource = "workspace" if not paths else "workspace/" + ",".join(sorted(paths))
    action = cap.Action(kind="fs.commit", resource=resource,
                        details=[("paths", ",".join(paths))])
    token = host_call(cap.request, action)
    bus.publish("kernel.fs.commit", {"token": token.token, "resource": resource,
                                     "paths": paths, **reply})
    return None  # the kernel's commit path answers


COMMANDS = {"write": write, "append": append, "replace": replace, "cat": cat, "ls": ls,
            "mkdir": mkdir, "mv": mv, "rm": rm}


@plugin.on("tools.fs")
def handle(msg: Message) -> None:
    text, reply = _request(msg)
    verb, _, rest = text.strip().partition(" ")
    verb = verb.lower()
    try:
        if verb == "commit":
            answer = commit(rest, reply)
            if answer is None:
                return
        elif verb in COMMANDS:
            with _root() as d:
                answer = COMMANDS[verb](d, rest)
        else:
            raise Usage(USAGE)
    except Usage as e:
        plugin.respond(f"{verb}: {e}", ok=False, **reply)
        return
    except HostError as e:
        plugin.respond(f"{verb} refused ({e.kind}): {e.reason}", ok=False, error=e.kind,
                       **reply)
        return
    except UnicodeDecodeError:
        plugin.respond(f"{verb}: not a UTF-8 text file", ok=False, **reply)
        return
    plugin.respond(answer, ok=True, **reply)


WitWorld = plugin.world()
