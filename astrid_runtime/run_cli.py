"""`astrid run`: an agent session over a project, typed at from the terminal.

    astrid run [--lower DIR] [--session NAME] [--mount DIR] [--policy FILE]

1. creates (or reopens) the astrid-fs session NAME over DIR and mounts it
   (`astrid-fs mount`: a separate daemon, so the kernel's own VFS calls
   never wait on a FUSE server in their process);
2. boots the kernel in this process from `plugins.lock` -- the same
   `open_kernel` + `Kernel.boot` as astridd -- with each plugin's VFS root
   `workspace` on the mount and the approval pipeline (policy file,
   kernel key, audit trail) wired in, plus the kernel's commit path;
3. publishes each line typed on stdin as `user.input` and prints every
   `agent.response` (after a request, waits for the first reply before
   reading the next line, so piped input is answered in order);
4. on EOF, Ctrl-C or SIGTERM: stops the plugins, closes their handles,
   unmounts, and prints how to review (`astrid-fs diff`) and land
   (`astrid-fs commit`) the session, which is kept.

The bus is recorded (`astrid log` / `show` / `replay`, `$ASTRID_HOME/recording`)
and tied to the session's files: an event whose handling changed files is
followed by the session snapshot `bus-SEQ` (recorder/timeline.py), so
`astrid-fs rollback NAME bus-SEQ` takes the files back to that event.
`--no-record` switches it off; so does another kernel recording this home.

Kernel logs go to `$ASTRID_HOME/logs/run-NAME.log`, audit lines to
`$ASTRID_HOME/audit.jsonl`. Exit codes: 0 after EOF or Ctrl-C, 1 bad input
or a part that would not start (one line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import trio

from astrid_fs.errors import AstridFsError
from astrid_fs.session import check_name
from astrid_runtime.approval.asks import Ask
from astrid_runtime.approval.person import ANSWERED, REQUESTED
from astrid_runtime.approval.policy import home_policy, load_policy
from astrid_runtime.approval.service import Approvals
from astrid_runtime.approval_cli import describe, shown
from astrid_runtime.bus import Message, Tap
from astrid_runtime.config import default_home
from astrid_runtime.errors import KernelError, Refusal
from astrid_runtime.kernel import Kernel
from astrid_runtime.net import provider as agent_provider
from astrid_runtime.session_kernel import (
    RunError,
    RunOptions,
    add_session_arguments,
    run_in_session,
    running_plugins,
    session_kernel,
)


def add_parser(sub: Any) -> None:
    """Register `astrid run` on the client's subcommand parsers."""
    p = sub.add_parser(
        "run", help="start an agent session over a project and talk to it",
        description="Create (or reopen) a session over --lower, mount it, boot the kernel "
                    "with the pinned plugins and publish each stdin line as user.input; "
                    "agent.response is printed. EOF or Ctrl-C stops, unmounts and keeps "
                    "the session for `astrid-fs diff` / `commit`.",
        epilog="example: astrid run --lower ~/project --session fix-bug\n"
               "         echo 'write notes.txt hello' | astrid run --lower .",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_session_arguments(p, session_required=False)
    p.add_argument("--reply-timeout", type=float, default=30.0,
                   help="seconds to wait for a reply before reading the next line")
    p.add_argument("--json", action="store_true",
                   help="print each agent.response as one JSON line")
    p.add_argument("--no-record", action="store_true",
                   help="do not record the bus (astrid log / show / replay, and the "
                        "session's bus-SEQ snapshots)")
    p.add_argument("--dashboard", action="store_true",
                   help="also serve the web dashboard on 127.0.0.1 (login URL on stderr), "
                        "where a person answers the asks (docs/dashboard.md)")
    p.add_argument("--dashboard-port", type=int, default=0,
                   help="the dashboard's port (default: any free port)")
    agent_provider.add_arguments(p)


def options(args: argparse.Namespace, lockfile: Path) -> RunOptions:
    home = default_home()
    lower = args.lower.expanduser().resolve()
    if not lower.is_dir():
        raise RunError(f"--lower {args.lower}: not a directory")
    session = args.session or time.strftime("run-%Y%m%d-%H%M%S")
    try:
        check_name(session)  # before it names a log file or a mount directory
    except AstridFsError as e:
        raise RunError(f"--session: {e}") from None
    if args.mount is not None and not args.mount.expanduser().is_dir():
        raise RunError(f"--mount {args.mount}: no such directory")
    mount = (args.mount or home / "mnt" / session).expanduser().resolve()
    policy = load_policy(args.policy) if args.policy is not None else home_policy(home)
    if args.mode is not None:
        policy = dataclasses.replace(policy, mode=args.mode)
    if not lockfile.exists():
        raise RunError(f"{lockfile}: no such lockfile (run from the repository, or pass "
                       "--lockfile)")
    kv_url = None if args.kv == "none" else (args.kv or "mem://")
    port: int | None = args.dashboard_port if getattr(args, "dashboard", False) else None
    if port is not None and not 0 <= port <= 65535:
        raise RunError(f"--dashboard-port {port}: not a TCP port (0-65535; 0: any free port)")
    return RunOptions(home, lower, session, mount, lockfile, policy, kv_url,
                      args.reply_timeout, args.json, args.socket, not args.no_record,
                      agent_provider.agent_options(args, home, lockfile), port)


class Console:
    """Prints replies; lets the input loop wait for the next one."""

    def __init__(self, out: IO[str], as_json: bool):
        self.out = out
        self.as_json = as_json
        self.replies = 0
        self._arrived = trio.Event()

    def show_approval(self, message: Message) -> None:
        """An ask waiting for a person (counts as a reply: the person is to answer), or an
        answer to one."""
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        if body.get("replay"):  # re-announced for a frontend; shown once already
            return
        if self.as_json:
            event = "requested" if message.topic == REQUESTED else "answered"
            print(json.dumps({"publisher": message.publisher, "approval": event,
                              "ask": body}), file=self.out, flush=True)
        elif message.topic == REQUESTED:
            print(f"astrid: approval needed [{body['id']}]: {describe(body)}\n"
                  "  answer here: y (once) | s (this session) | a (always) | n [reason] "
                  f"(deny)\n  or from a shell: astrid approve {body['id']} "
                  f"[--session|--always] / astrid deny {body['id']}",
                  file=self.out, flush=True)
        else:
            verdict = "denied" if body["answer"] == "deny" else f"approved ({body['answer']})"
            why = f": {shown(body['reason'])}" if body.get("reason") else ""
            print(f"astrid: [{shown(body['id'])}] {verdict} by {shown(body['by'])}{why}",
                  file=self.out, flush=True)
        if message.topic == REQUESTED:
            self._wake()

    def _wake(self) -> None:
        self.replies += 1
        self._arrived.set()
        self._arrived = trio.Event()

    def show(self, publisher: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        if self.as_json:
            print(json.dumps({"publisher": publisher, "response": body}), file=self.out,
                  flush=True)
        else:
            shown = body.get("text", text) if isinstance(body, dict) else str(body)
            print(shown, file=self.out, flush=True)
        self._wake()

    async def next_reply(self) -> None:
        await self._arrived.wait()

    async def pump(self, tap: Tap) -> None:
        while True:
            message = await tap.receive()
            if message.topic in (REQUESTED, ANSWERED):
                self.show_approval(message)
            else:
                self.show(message.publisher, message.payload)


#: What a person types to answer the oldest waiting ask inline.
TERMINAL_ANSWERS = {"y": "once", "yes": "once", "once": "once", "s": "session",
                    "session": "session", "a": "always", "always": "always", "n": "deny",
                    "no": "deny", "deny": "deny"}


def terminal_answer(text: str) -> tuple[str, str] | None:
    """(answer, reason) when `text` answers an ask (`y`, `s`, `a`, `n [reason]`), else None."""
    word, _, rest = text.partition(" ")
    answer = TERMINAL_ANSWERS.get(word.lower())
    if answer is None or (rest and answer != "deny"):
        return None
    return answer, rest.strip()


def _answer_inline(approvals: Approvals, text: str, out: IO[str]) -> Ask | None:
    """Answer the oldest waiting ask from a line typed in the terminal; the ask, or None."""
    pending = approvals.queue.pending()
    parsed = terminal_answer(text) if pending else None
    if parsed is None:
        return None
    try:
        return approvals.answer(pending[0].id, parsed[0], parsed[1], "terminal")
    except Refusal as e:  # answered elsewhere or expired a moment ago
        print(f"astrid: {e.message}", file=out, flush=True)
        return None


async def _read_lines(stdin: IO[str], kernel: Kernel, console: Console, opts: RunOptions,
                      err: IO[str], approvals: Approvals) -> None:
    interactive = stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", file=console.out, flush=True)
        line = await trio.to_thread.run_sync(stdin.readline, abandon_on_cancel=True)
        if not line:
            return
        text = line.strip()
        if not text:
            continue
        if not interactive and not opts.json:
            print(f"you> {text}", file=console.out, flush=True)
        if _answer_inline(approvals, text, err) is None:
            try:
                kernel.publish("user.input", text.encode())
            except KernelError as e:
                print(f"astrid: not sent: {e}", file=err, flush=True)
                continue
        with trio.move_on_after(opts.reply_timeout_s) as scope:
            await console.next_reply()
        if scope.cancelled_caught:
            print(f"astrid: no reply within {opts.reply_timeout_s:g}s", file=err, flush=True)


async def session_loop(opts: RunOptions, stdin: IO[str], out: IO[str], err: IO[str]) -> str:
    """Boot the kernel on the mounted session and talk until EOF or a signal; why it ended."""
    ended = "eof"
    console = Console(out, opts.json)
    taps: list[Tap] = []

    def attach(kernel: Kernel) -> None:
        tap = Tap(kernel.bus, "agent.response")
        # One mailbox for replies and approval events: shown in the order they
        # happened (an answer before the reply it unblocked). Not `approval.*`: a
        # frontend plugin's `approval.answer` / `approval.pending` are requests to
        # the kernel, not events (they were printed as replies).
        tap.endpoint.subscribe(REQUESTED)
        tap.endpoint.subscribe(ANSWERED)
        taps.append(tap)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with session_kernel(opts, err, attach) as booted:
            kernel, approvals, tap = booted.kernel, booted.approvals, taps[0]
            if opts.dashboard_port is not None:
                from astrid_runtime.dashboard.cli import start_dashboard  # imports run_cli

                await start_dashboard(booted, opts, opts.dashboard_port, err)
            print(f"astrid: control socket {booted.socket} (astrid status / approvals / "
                  f"approve ID); approval mode {opts.policy.mode}", file=err, flush=True)
            print(f"astrid: session {opts.session} mounted at {opts.mount}; plugins: "
                  f"{', '.join(running_plugins(kernel)) or 'none'}. Type `help`; Ctrl-D or "
                  "Ctrl-C ends.", file=err, flush=True)
            async with trio.open_nursery() as talk:
                talk.start_soon(console.pump, tap)

                async def on_signal() -> None:
                    nonlocal ended
                    async for _ in signals:
                        ended = "signal"
                        if stdin.isatty():
                            print(file=out, flush=True)  # past the echoed ^C
                        talk.cancel_scope.cancel()
                        return

                async def read_then_stop() -> None:
                    await _read_lines(stdin, kernel, console, opts, err, approvals)
                    talk.cancel_scope.cancel()

                talk.start_soon(on_signal)
                talk.start_soon(read_then_stop)
            tap.close()
    return ended


def run(opts: RunOptions, stdin: IO[str] = sys.stdin, out: IO[str] = sys.stdout,
        err: IO[str] = sys.stderr) -> int:
    """Mount, talk, unmount. Raises `KernelError` (one line) on bad input."""
    return run_in_session(opts, err, lambda: trio.run(session_loop, opts, stdin, out, err))


def cmd_run(args: argparse.Namespace, lockfile: Path) -> int:
    """The `astrid run` verb (client_cli dispatches here)."""
    return run(options(args, lockfile))


def verb(lockfile: Callable[[argparse.Namespace], Path]
         ) -> Callable[[argparse.Namespace], int]:
    """`astrid run` for the client's command table; `lockfile` resolves --lockfile."""
    return lambda args: cmd_run(args, lockfile(args).resolve())




__all__ = ["add_parser", "cmd_run", "options", "run", "session_loop", "verb"]
