"""`astrid`: the kernel's client.

    astrid publish TOPIC DATA        publish DATA (text; `-` reads stdin) on TOPIC
    astrid tail PATTERN              print bus messages matching PATTERN
    astrid status                    plugins, state, restarts, mailbox depth
    astrid plugin install PATH       show what a plugin asks, pin it in plugins.lock
    astrid plugin verify             check every pinned component against its blake3
    astrid plugin list               show the pins
    astrid audit verify              check the audit trail's signatures, chain and head
    astrid log [PATTERN] / show SEQ  the recorded bus; replay PLUGIN re-runs it (log_cli.py)
    astrid run [--lower DIR]         an agent session over DIR, typed at (run_cli.py)
    astrid mcp --session NAME        a session's tools served over MCP on stdio (mcp/cli.py)
    astrid dashboard --session NAME  a session's kernel with a web dashboard (dashboard/cli.py)
    astrid approvals                 asks waiting for a person, standing approvals
    astrid approve ID [--session|--always] / deny ID [REASON] / revoke GRANT

Exit codes: 0 ok; 1 refused or bad input (one line on stderr); 2 usage;
3 astridd not reachable; 4 `plugin verify` found a mismatch.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from astrid_runtime import approval_cli, audit_cli, log_cli, run_cli
from astrid_runtime.config import default_socket, defaults, load_config
from astrid_runtime.control import ControlClient
from astrid_runtime.dashboard import cli as dashboard_cli
from astrid_runtime.errors import KernelError, KernelUnreachable, VerifyError
from astrid_runtime.grants import DEFAULT_POLICY
from astrid_runtime.install import describe, plan_install, precompile, refusal, wildcard_refusal
from astrid_runtime.lockfile import load_lockfile, read_verified
from astrid_runtime.mcp import cli as mcp_cli
from astrid_runtime.scaffold import build_hint, scaffold_plugin
from astrid_runtime.scaffold.build import main as build_plugins
from astrid_runtime.surreal_exit import leave

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_MISMATCH = 1, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="astrid", description="Talk to the Astrid kernel (astridd) and manage plugins.",
        epilog="examples:\n  astrid publish user.input 'hello'\n  astrid tail 'agent.>'\n"
               "  astrid plugin install plugins/notes",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", type=Path, help="control socket (default: $ASTRID_SOCKET or "
                   "$ASTRID_HOME/astridd.sock)")
    p.add_argument("--config", type=Path, help="astridd.toml to take socket and lockfile from")
    p.add_argument("--lockfile", type=Path, help="plugins.lock (default: ./plugins.lock)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pub = sub.add_parser("publish", help="publish a message", description="Publish DATA on TOPIC.",
                         epilog="example: astrid publish user.input 'what is in notes?'")
    pub.add_argument("topic")
    pub.add_argument("data", help="message text; '-' reads bytes from stdin")
    pub.add_argument("--json", action="store_true", help="print the reply as JSON")

    tail = sub.add_parser("tail", help="print messages matching a pattern",
                          epilog="example: astrid tail 'agent.>' --count 1")
    tail.add_argument("pattern")
    tail.add_argument("--count", type=int, help="exit after this many messages")
    tail.add_argument("--json", action="store_true", help="one JSON object per message")

    status = sub.add_parser("status", help="kernel and plugin status")
    status.add_argument("--json", action="store_true")

    plugin = sub.add_parser("plugin", help="install, verify or list plugins")
    psub = plugin.add_subparsers(dest="plugin_command", required=True, metavar="ACTION")
    inst = psub.add_parser("install", help="pin PATH (a plugin dir or plugin.toml)",
                           epilog="example: astrid plugin install plugins/notes")
    inst.add_argument("path", type=Path)
    inst.add_argument("--allow-wildcards", action="store_true",
                      help="grant publish/subscribe patterns with '*' or '>' without asking")
    inst.add_argument("--no-compile", action="store_true",
                      help="only pin; the kernel compiles at its first boot")
    new = psub.add_parser("new", help="scaffold a plugin (Python, C or JS) in DIR/NAME",
                          epilog="example: astrid plugin new --lang c greeter plugins")
    new.add_argument("name")
    new.add_argument("dir", nargs="?", type=Path, default=Path("."))
    new.add_argument("--lang", default="python", metavar="python|c|js",
                     help="the plugin's language (default: python)")
    build = psub.add_parser("build", help="build plugin directories into their components",
                            epilog="example: astrid plugin build greeter (needs the toolchains: "
                                   "pip install 'astrid[plugins]')")
    build.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    build.add_argument("--force", action="store_true",
                       help="rebuild even when the recorded inputs match")
    swap = psub.add_parser("swap", help="hot-swap a running link provider to its current pin",
                           epilog="example: astrid plugin install plugins/markdown && "
                                  "astrid plugin swap markdown")
    swap.add_argument("name")
    psub.add_parser("verify", help="check every pinned component's blake3")
    lst = psub.add_parser("list", help="list pinned plugins")
    lst.add_argument("--json", action="store_true")
    approval_cli.add_parsers(sub)
    audit_cli.add_parser(sub)
    log_cli.add_parsers(sub)
    run_cli.add_parser(sub)
    mcp_cli.add_parser(sub)
    dashboard_cli.add_parser(sub)
    return p


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if args.config:
        return load_config(args.config).socket
    return default_socket()


def _lockfile(args: argparse.Namespace) -> Path:
    if args.lockfile:
        return Path(args.lockfile)
    if args.config:
        return load_config(args.config).lockfile
    env = os.environ.get("ASTRID_LOCKFILE")
    return Path(env) if env else Path("plugins.lock")


def _client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(_socket(args))


def _render_payload(payload: bytes) -> str:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(payload).decode()
    return text if text.isprintable() or text == "" else json.dumps(text)


def cmd_publish(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read() if args.data == "-" else args.data.encode("utf-8")
    reply = _client(args).request({"op": "publish", "topic": args.topic,
                                   "payload": base64.b64encode(data).decode()})
    if args.json:
        print(json.dumps(reply))
    else:
        n = reply["delivered"]
        print(f"published to {args.topic} ({n} subscriber{'s' if n != 1 else ''})")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    seen = 0
    events = _client(args).stream({"op": "tail", "pattern": args.pattern})
    for event in events:
        if event.get("ok"):
            print(f"astrid: tailing {args.pattern!r} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            continue
        if "gap" in event:
            print(f"astrid: tail fell behind; {event['gap']} message(s) dropped",
                  file=sys.stderr)
            continue
        payload = base64.b64decode(event["payload"])
        if args.json:
            print(json.dumps({"topic": event["topic"], "publisher": event["publisher"],
                              "payload": _render_payload(payload)}), flush=True)
        else:
            print(f"{event['topic']} {_render_payload(payload)}", flush=True)
        seen += 1
        if args.count is not None and seen >= args.count:
            break
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = _client(args).request({"op": "status"})["status"]
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"astridd up {status['uptime_s']}s, {len(status['plugins'])} plugin(s)")
    header = f"{'PLUGIN':<20} {'STATE':<9} {'RESTARTS':>8} {'MAILBOX':>9} {'DELIVERED':>9}  NOTE"
    print(header)
    for p in status["plugins"]:
        mailbox = f"{p.get('mailbox', '-')}/{p.get('mailbox_capacity', '-')}"
        note = p.get("last_error") or ""
        print(f"{p['name']:<20} {p['state']:<9} {p.get('restarts', '-')!s:>8} {mailbox:>9} "
              f"{p.get('delivered', '-')!s:>9}  {note}")
    for link in status.get("links") or []:  # providers serve calls, not the bus
        print(f"{link['name']:<20} {link['state']:<9} {link['restarts']!s:>8} {'link':>9} "
              f"{link['calls']!s:>9}  exports {', '.join(link['exports'])}"
              + (f"; {link['last_error']}" if link["last_error"] else ""))
    approval_cli.print_status(status)
    return 0


def _install(args: argparse.Namespace, lock_path: Path) -> int:
    policy = load_config(args.config).grant_policy if args.config else DEFAULT_POLICY
    plan = plan_install(args.path, policy)
    print("\n".join(describe(plan.entry)))
    refused = refusal(plan)
    if refused:
        raise KernelError(refused)
    if plan.wildcards and not args.allow_wildcards:
        if not sys.stdin.isatty():
            raise KernelError(wildcard_refusal(plan))
        answer = input(f"grant the wildcards {', '.join(plan.wildcards)}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise KernelError(wildcard_refusal(plan))
    config = load_config(args.config) if args.config else defaults()
    if not args.no_compile and config.cache_dir is not None:
        # Compile now, into the kernel's own cache, so its first boot is warm.
        print(f"compiling {plan.entry.name} into {config.cache_dir} …", end=" ", flush=True)
        t0 = time.perf_counter()
        try:
            precompile(plan.entry, config.cache_dir)
        except KernelError as e:
            print("refused")
            raise KernelError(f"{plan.manifest.component}: {e}") from None
        print(f"{time.perf_counter() - t0:.1f} s")
    lock = load_lockfile(lock_path)
    lock.with_entry(plan.entry).save()
    print(f"pinned {plan.entry.name} {plan.entry.version} blake3 {plan.entry.blake3[:16]}… "
          f"in {lock_path}")
    return 0


def cmd_plugin(args: argparse.Namespace) -> int:
    if args.plugin_command == "new":
        made = scaffold_plugin(args.name, args.dir, args.lang)
        print(build_hint(made, args.lang))  # the builder ships with astrid: works anywhere
        return 0
    if args.plugin_command == "build":  # touches no lockfile: `install` pins
        return build_plugins([*map(str, args.dirs), *(["--force"] if args.force else [])])
    if args.plugin_command == "swap":  # the running kernel re-reads its own lockfile
        reply = _client(args).request({"op": "links.swap", "plugin": args.name})
        print(f"swapped {args.name} to {reply['version']}; calls in flight finished on the "
              "old version")
        return 0
    lock_path = _lockfile(args)
    if args.plugin_command == "install":
        return _install(args, lock_path)
    lock = load_lockfile(lock_path, missing_ok=False)
    if args.plugin_command == "verify":
        bad = 0
        for entry in lock.entries:
            try:
                read_verified(entry)
                print(f"ok       {entry.name} {entry.version}")
            except VerifyError as e:
                bad += 1
                print(f"MISMATCH {e}")
        return EXIT_MISMATCH if bad else 0
    rows: list[dict[str, Any]] = [
        {"name": e.name, "version": e.version, "blake3": e.blake3,
         "component": str(e.component), "grants": e.grants.to_toml()} for e in lock.entries]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            g = r["grants"]
            print(f"{r['name']:<20} {r['version']:<10} {r['blake3'][:16]}…  "
                  f"publish={','.join(g['publish']) or '-'} "
                  f"subscribe={','.join(g['subscribe']) or '-'} kv={'yes' if g['kv'] else 'no'}")
    return 0


COMMANDS = {"publish": cmd_publish, "tail": cmd_tail, "status": cmd_status,
            "plugin": cmd_plugin,
            "run": run_cli.verb(_lockfile),
            "mcp": mcp_cli.verb(_lockfile),
            "dashboard": dashboard_cli.verb(_lockfile),
            "audit": audit_cli.verb(),
            **log_cli.verbs(_socket, _lockfile),
            **approval_cli.verbs(_client)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KernelUnreachable as e:
        print(f"astrid: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KernelError as e:
        print(f"astrid: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def entry() -> None:
    """The `astrid` program: `main`, then out; without the interpreter's
    finalization when this process ran the embedded SurrealDB engine (`astrid
    log` reads the recording itself when no kernel answers): surreal_exit.py."""
    code = main()
    if "surrealdb" not in sys.modules:
        sys.exit(code)
    leave(code)


if __name__ == "__main__":
    entry()
