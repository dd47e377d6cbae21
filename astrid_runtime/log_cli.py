"""`astrid log`, `astrid show SEQ`, `astrid replay PLUGIN`: the recorded bus.

    astrid log [PATTERN] [--plugin P] [--from SEQ] [--to SEQ] [--since T] [--until T]
               [--limit N] [--json]
    astrid show SEQ [--json]
    astrid replay PLUGIN [--wasm NEW.wasm] [--from SEQ] [--to SEQ] [--json]

A running kernel answers from its recording (control op `recording.query`,
after writing what it gathered); with no kernel, the store is opened
directly (`[recording] url` of `--config`, else `$ASTRID_HOME/recording`).
`replay` exits 0 when every output matched the recording, 4 when some
differed (each difference printed), 1 when the plugin cannot be loaded.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from astrid_runtime.config import default_home, load_config
from astrid_runtime.control import ControlClient
from astrid_runtime.errors import ControlError, KernelError, KernelUnreachable
from astrid_runtime.recorder.chunk import Call, Event
from astrid_runtime.recorder.query import answer
from astrid_runtime.recorder.settings import RecordingSettings
from astrid_runtime.recorder.store import default_url, open_store
from astrid_runtime.recorder.values import readable

EXIT_DIFFERS = 4


def add_parsers(sub: Any) -> None:
    log = sub.add_parser(
        "log", help="list recorded bus events",
        description="List recorded bus deliveries, oldest first (the newest --limit).",
        epilog="examples:\n  astrid log 'notes.>' --plugin notes --limit 20\n"
               "  astrid log --from 100 --to 200 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    log.add_argument("pattern", nargs="?", help="topic pattern ('*' one token, '>' the rest)")
    log.add_argument("--plugin", help="events this plugin sent or received")
    log.add_argument("--from", dest="first", type=int, help="first sequence number")
    log.add_argument("--to", dest="last", type=int, help="last sequence number")
    log.add_argument("--since", type=float, help="not before this time (unix seconds, or "
                     "negative: seconds ago)")
    log.add_argument("--until", type=float, help="not after this time (unix seconds)")
    log.add_argument("--limit", type=int, default=100, help="newest N events (default 100; "
                     "0: all)")
    log.add_argument("--json", action="store_true", help="one JSON object per line")
    show = sub.add_parser("show", help="one recorded event, its payload and host calls",
                          epilog="example: astrid show 42")
    show.add_argument("seq", type=int)
    show.add_argument("--json", action="store_true")
    rep = sub.add_parser(
        "replay", help="re-run a plugin against its recorded inputs",
        description="Re-run PLUGIN (its pinned component, or --wasm) against every recorded "
                    "message it handled, host calls answered from the recording, and report "
                    "where its outputs differ (exit 4).",
        epilog="examples:\n  astrid replay notes\n  astrid replay notes --wasm build/notes.wasm",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("plugin")
    rep.add_argument("--wasm", type=Path, help="a new build to replay instead of the pin")
    rep.add_argument("--from", dest="first", type=int, help="first sequence number")
    rep.add_argument("--to", dest="last", type=int, help="last sequence number")
    rep.add_argument("--json", action="store_true")


def _settings(args: argparse.Namespace) -> tuple[RecordingSettings, Path]:
    if args.config:
        config = load_config(args.config)
        return config.recording, config.home
    return RecordingSettings(), default_home()


def fetch(args: argparse.Namespace, socket: Path, request: dict[str, Any]) -> dict[str, Any]:
    """The answer to a recording query: from the running kernel, else from the store."""
    try:
        return ControlClient(socket).request({"op": "recording.query", **request})
    except KernelUnreachable:
        pass
    except ControlError as e:
        if "unknown op" not in str(e):  # a kernel recording nothing: read the store
            raise
    settings, home = _settings(args)
    url = settings.url or default_url(home)
    if url.startswith("surrealkv://") and not Path(url.removeprefix("surrealkv://")).exists():
        raise KernelError(f"no recording at {url.removeprefix('surrealkv://')}")
    store = open_store(settings, home)
    try:
        return answer(store, request)
    finally:
        store.close()


def _payload_text(b64: str) -> str:
    raw = base64.b64decode(b64)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + b64
    return text if text.isprintable() or text == "" else json.dumps(text)


def _line(event: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event["t"]))
    to = ",".join(event["to"]) or "-"
    notes = []
    for call in event["calls"]:
        if call["outcome"] not in ("ok", "init"):
            notes.append(f"{call['plugin']} {call['outcome']}: {call['detail']}")
        if call.get("wrote"):
            snap = f" (snapshot {call['snapshot']})" if call.get("snapshot") else ""
            notes.append(f"{call['plugin']} wrote {', '.join(call['wrote'])}{snap}")
    payload = _payload_text(event["payload"])
    if len(payload) > 60:
        payload = payload[:57] + "..."
    tail = ("  [" + "; ".join(notes) + "]") if notes else ""
    return f"{event['seq']:>7} {stamp} {event['topic']} {event['sender']} -> {to}  {payload}{tail}"


def cmd_log(args: argparse.Namespace, socket: Path) -> int:
    request: dict[str, Any] = {"limit": args.limit or None}
    if args.pattern:
        request["topic"] = args.pattern
    if args.plugin:
        request["plugin"] = args.plugin
    if args.first is not None:
        request["from"] = args.first
    if args.last is not None:
        request["to"] = args.last
    if args.since is not None:
        request["since"] = args.since if args.since >= 0 else time.time() + args.since
    if args.until is not None:
        request["until"] = args.until
    reply = fetch(args, socket, request)
    for event in reply["events"]:
        print(json.dumps(event) if args.json else _line(event))
    return 0


def cmd_show(args: argparse.Namespace, socket: Path) -> int:
    reply = fetch(args, socket, {"from": args.seq, "to": args.seq, "host": True})
    if not reply["events"]:
        raise KernelError(f"no recorded event {args.seq} (dropped by retention, or not yet "
                          "recorded)")
    event = reply["events"][0]
    if args.json:
        print(json.dumps(event, indent=2))
        return 0
    print(_line({**event, "calls": []}))
    who = event["sender"] + (f" (kernel {event['kernel'][:16]}…)" if event.get("kernel") else "")
    print(f"  sender: {who}\n  payload: {_payload_text(event['payload'])}")
    for call in event["calls"]:
        print(f"  {call['plugin']} {call['version']}: {call['outcome']}"
              + (f" ({call['detail']})" if call["detail"] else ""))
        for name, call_args, result in call["host"]:
            print(f"    {name}{tuple(readable(call_args))} -> {readable(result)}")
        if call.get("snapshot"):
            print(f"    files: {', '.join(call['wrote'])} -> snapshot {call['snapshot']}")
    return 0


def cmd_replay(args: argparse.Namespace, socket: Path, lockfile: Path) -> int:
    from astrid_runtime.recorder.replay import replay

    request: dict[str, Any] = {"plugin": args.plugin, "host": True}
    if args.first is not None:
        request["from"] = args.first
    if args.last is not None:
        request["to"] = args.last
    reply = fetch(args, socket, request)
    events = [Event.from_json(e) for e in reply["events"]]
    calls = [Call.from_json({**c, "seq": e["seq"]}) for e in reply["events"]
             for c in e["calls"] if c["plugin"] == args.plugin]
    engine, target = _target(args, lockfile)
    report = trio.run(replay, engine, target, events, calls)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(f"replayed {len(report.calls)} message(s) to {args.plugin}: "
              + ("outputs identical" if report.identical
                 else f"{len(report.differences)} difference(s)"))
        for crash in report.crashes():
            print(f"  crash at seq {crash.seq} ({crash.topic}): {crash.detail} "
                  f"[recorded: {crash.recorded}]")
        for difference in report.differences:
            print(f"  {difference}")
        if report.skipped:
            print(f"  {len(report.skipped)} call(s) without a recorded event skipped")
    return 0 if report.identical else EXIT_DIFFERS


def _target(args: argparse.Namespace, lockfile: Path) -> tuple[Any, Any]:
    from astrid_runtime.engine import KernelEngine
    from astrid_runtime.lockfile import load_lockfile, read_verified
    from astrid_runtime.manifest import load_manifest
    from astrid_runtime.recorder.replay import Target

    lock = load_lockfile(lockfile)
    entry = lock.get(args.plugin)
    if entry is None:
        raise KernelError(f"plugin {args.plugin} is not pinned in {lockfile}")
    manifest = load_manifest(entry.source)
    wasm = args.wasm.read_bytes() if args.wasm else read_verified(entry, manifest.component)
    _, home = _settings(args)
    engine = KernelEngine(cache_dir=home / "cache")
    compiled = engine.compile(wasm)
    return engine, Target(entry.name, compiled.component, entry.config, entry.grants,
                          entry.limits)


def verbs(socket: Callable[[argparse.Namespace], Path],
          lockfile: Callable[[argparse.Namespace], Path]
          ) -> dict[str, Callable[[argparse.Namespace], int]]:
    return {"log": lambda a: cmd_log(a, socket(a)),
            "show": lambda a: cmd_show(a, socket(a)),
            "replay": lambda a: cmd_replay(a, socket(a), lockfile(a))}


__all__ = ["EXIT_DIFFERS", "add_parsers", "fetch", "verbs"]
