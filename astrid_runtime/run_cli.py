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
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import trio

from astrid_fs.errors import AstridFsError
from astrid_fs.session import check_name
from astrid_runtime import logs
from astrid_runtime.abi.context import KvBackend, PluginContext
from astrid_runtime.approval.asks import Ask
from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.person import ANSWERED, REQUESTED
from astrid_runtime.approval.pipeline import ApprovalPipeline
from astrid_runtime.approval.policy import MODES, POLICY_FILE, Policy, home_policy, load_policy
from astrid_runtime.approval.service import AUDIT_FILE, Approvals, start_approvals
from astrid_runtime.approval_cli import describe, shown
from astrid_runtime.bus import Message, Tap
from astrid_runtime.commit_service import CommitService
from astrid_runtime.config import default_home, default_socket
from astrid_runtime.control import ControlServer
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import ControlError, KernelError, Refusal, first_kernel_error
from astrid_runtime.kernel import BootPlan, Kernel, open_kernel
from astrid_runtime.mcp import provider as mcp_provider
from astrid_runtime.net import provider as agent_provider
from astrid_runtime.recorder import recorder
from astrid_runtime.recorder.settings import RecordingSettings
from astrid_runtime.recorder.store import RecordingBusy
from astrid_runtime.recorder.timeline import Timeline
from astrid_runtime.supervisor import State
from astrid_runtime.vfs import PluginVfs

ASTRID_FS = (sys.executable, "-m", "astrid_fs.cli")
#: How long to wait for plugins to come up (a cold compile of a Python plugin is 4-8 s).
BOOT_TIMEOUT_S = 120.0


class RunError(KernelError):
    """`astrid run` could not set up or tear down a part (one line for the person)."""


@dataclass(frozen=True)
class RunOptions:
    home: Path
    lower: Path
    session: str
    mount: Path
    lockfile: Path
    #: Loaded before anything is mounted: a bad policy file is bad input.
    policy: Policy
    kv_url: str | None
    reply_timeout_s: float
    json: bool
    #: Control socket (`astrid status / approvals / approve`); None: the default
    #: socket if no kernel serves it, else $ASTRID_HOME/run-SESSION.sock.
    socket: Path | None = None
    #: Record the bus, tied to the session's snapshots (`--no-record`: False).
    record: bool = True
    #: `--provider`: the LLM agent instead of the keyword router (net/provider.py).
    agent: agent_provider.AgentOptions | None = None


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
    p.add_argument("--lower", type=Path, default=Path("."),
                   help="the project directory (default: the current directory)")
    p.add_argument("--session", help="session name (default: run-YYYYMMDD-HHMMSS)")
    p.add_argument("--mount", type=Path,
                   help="mount point (default: $ASTRID_HOME/mnt/SESSION)")
    p.add_argument("--policy", type=Path,
                   help=f"approval policy TOML (default: $ASTRID_HOME/{POLICY_FILE} if it "
                        "exists; otherwise every request is 'ask', hence denied)")
    p.add_argument("--kv", help="KV URL (default: mem://, nothing kept across runs)")
    p.add_argument("--reply-timeout", type=float, default=30.0,
                   help="seconds to wait for a reply before reading the next line")
    p.add_argument("--json", action="store_true",
                   help="print each agent.response as one JSON line")
    p.add_argument("--mode", choices=tuple(MODES),
                   help="approval mode, overriding the policy file's (default: guided)")
    p.add_argument("--socket", type=Path,
                   help="control socket (default: $ASTRID_HOME/astridd.sock when no kernel "
                        "serves it, else $ASTRID_HOME/run-SESSION.sock)")
    p.add_argument("--no-record", action="store_true",
                   help="do not record the bus (astrid log / show / replay, and the "
                        "session's bus-SEQ snapshots)")
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
    return RunOptions(home, lower, session, mount, lockfile, policy, kv_url,
                      args.reply_timeout, args.json, args.socket, not args.no_record,
                      agent_provider.agent_options(args, home, lockfile))


# -- the mount --------------------------------------------------------------------

def _astrid_fs(*argv: str) -> subprocess.CompletedProcess[str]:
    # Its own session: a signal to our process group (a second Ctrl-C, an MCP client
    # killing `astrid mcp`'s group after its grace period) cannot stop an unmount halfway.
    return subprocess.run([*ASTRID_FS, *argv], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=300, start_new_session=True)


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stderr.strip() or done.stdout.strip() or "failed").splitlines()
    return lines[-1].removeprefix("astrid-fs: ")


def mount(opts: RunOptions) -> None:
    opts.mount.mkdir(parents=True, exist_ok=True)
    done = _astrid_fs("mount", "--lower", str(opts.lower), "--session", opts.session,
                      str(opts.mount))
    if done.returncode != 0:
        raise RunError(f"cannot mount session {opts.session}: {_last_line(done)}")


def umount(opts: RunOptions) -> str | None:
    """Unmount; None on success, else the reason."""
    done = _astrid_fs("umount", str(opts.mount))
    return None if done.returncode == 0 else _last_line(done)


# -- the kernel ----------------------------------------------------------------------

def _open_kv(url: str | None) -> KvBackend | None:
    if url is None:
        return None
    from astrid_runtime.kv import KvStore

    return KvStore(url)


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


def _hook(opts: RunOptions, pipeline: ApprovalPipeline,
          made: list[PluginVfs]) -> Callable[[PluginContext], None]:
    def hook(ctx: PluginContext) -> None:
        vfs = PluginVfs(ctx.name, ctx.grants.vfs, {"workspace": opts.mount},
                        audit=pipeline.audit.record)
        made.append(vfs)
        ctx.vfs = vfs
    return hook


async def _serve_control(kernel: Kernel, approvals: Approvals, opts: RunOptions) -> Path:
    """Serve the control socket; the path it listens on."""
    first = opts.socket or default_socket(opts.home)
    try:
        await kernel.start_service(ControlServer(kernel, first, approvals).serve)
        return first
    except ControlError:
        if opts.socket is not None:
            raise RunError(f"--socket {opts.socket}: another kernel listens there") from None
    second = opts.home / f"run-{opts.session}.sock"
    await kernel.start_service(ControlServer(kernel, second, approvals).serve)
    return second


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


async def _start_recording(kernel: Kernel, opts: RunOptions, err: IO[str]) -> None:
    """Record the bus on one timeline with the session's files (before the plugins boot,
    so their first messages are recorded); not when another kernel records this home."""
    if not opts.record:
        return
    timeline = Timeline(opts.session, opts.home)  # astrid-fs shares $ASTRID_HOME
    try:
        await kernel.start_service(recorder.serve, kernel, RecordingSettings(), opts.home,
                                   timeline)
    except RecordingBusy as e:
        print(f"astrid: not recording: {e}", file=err, flush=True)


async def _wait_running(kernel: Kernel) -> None:
    with trio.move_on_after(BOOT_TIMEOUT_S):
        for sup in kernel.supervisors.values():
            await sup.wait_for(lambda s: s.state in (State.RUNNING, State.DISABLED,
                                                     State.STOPPED))


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


@dataclass(frozen=True)
class SessionKernel:
    """A kernel over a mounted session, as `astrid run` and `astrid mcp` boot it."""

    kernel: Kernel
    approvals: Approvals
    #: The control socket it serves (`astrid approvals / approve / deny`).
    socket: Path


@asynccontextmanager
async def session_kernel(opts: RunOptions, err: IO[str],
                         before_boot: Callable[[Kernel], None] | None = None
                         ) -> AsyncIterator[SessionKernel]:
    """The kernel on the mounted session: approvals, the commit path, the control socket,
    the recorder and the pinned plugins running (refusals reported on `err`).
    `before_boot` runs once the bus exists, before any plugin starts (to attach taps
    that must see everything). Plugins are stopped when the block ends normally; their
    handles are closed either way."""
    home = opts.home
    audit = AuditLog(home / AUDIT_FILE)
    engine = KernelEngine(cache_dir=home / "cache")
    kv = await trio.to_thread.run_sync(_open_kv, opts.kv_url)
    made: list[PluginVfs] = []
    try:
        async with open_kernel(engine, kv) as kernel:
            approvals = await start_approvals(kernel, home, opts.policy, audit=audit,
                                              session=opts.session, lockfile=opts.lockfile)
            pipeline = approvals.pipeline
            kernel.context_hooks.append(_hook(opts, pipeline, made))
            if opts.agent is not None:
                agent_provider.attach(kernel, opts.agent)
            if before_boot is not None:
                before_boot(kernel)
            commits = CommitService(kernel.bus, pipeline, opts.session)
            await kernel.start_service(commits.serve)
            socket = await _serve_control(kernel, approvals, opts)
            await _start_recording(kernel, opts, err)
            await mcp_provider.start_providers(kernel, pipeline, home)  # mcp-servers.toml
            sources = await trio.to_thread.run_sync(agent_provider.boot_sources,
                                                      opts.lockfile, opts.agent)
            await kernel.boot(BootPlan(opts.lockfile, sources))
            await _wait_running(kernel)
            for refused in kernel.refused.values():
                print(f"astrid: plugin {refused.name} refused: {refused.reason}",
                      file=err, flush=True)
            yield SessionKernel(kernel, approvals, socket)
            await kernel.stop()
    finally:
        for vfs in made:  # an open fd on the mount would keep it busy
            vfs.close_all()
        close = getattr(kv, "close", None)
        if close is not None:
            await trio.to_thread.run_sync(close)
        audit.close()


def running_plugins(kernel: Kernel) -> list[str]:
    """Names of the plugins up, sorted."""
    return sorted(n for n, s in kernel.supervisors.items() if s.state is State.RUNNING)


async def session_loop(opts: RunOptions, stdin: IO[str], out: IO[str], err: IO[str]) -> str:
    """Boot the kernel on the mounted session and talk until EOF or a signal; why it ended."""
    ended = "eof"
    console = Console(out, opts.json)
    taps: list[Tap] = []

    def attach(kernel: Kernel) -> None:
        tap = Tap(kernel.bus, "agent.response")
        # One mailbox for replies and approval events: shown in the order they
        # happened (an answer before the reply it unblocked).
        tap.endpoint.subscribe("approval.*")
        taps.append(tap)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with session_kernel(opts, err, attach) as booted:
            kernel, approvals, tap = booted.kernel, booted.approvals, taps[0]
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


def _review_hint(opts: RunOptions) -> str:
    name = opts.session
    return (f"Session '{name}' kept for review:\n"
            f"  astrid-fs diff --stat {name}      # what changed\n"
            f"  astrid-fs diff --patch {name}     # the diffs\n"
            f"  astrid-fs commit {name}           # land it in {opts.lower}\n"
            f"  astrid-fs discard {name}          # or throw it away")


def in_mounted_session(opts: RunOptions, err: IO[str], body: Callable[[], object]) -> None:
    """Mount the session, call `body` (which runs the kernel), unmount, print how to
    review. Kernel logs go to $ASTRID_HOME/logs/run-SESSION.log. Raises `RunError`."""
    opts.home.mkdir(parents=True, exist_ok=True)
    log_dir = opts.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"run-{opts.session}.log"
    mount(opts)
    problem: str | None = None
    try:
        # The handler keeps the file for the life of the process (late log lines).
        logs.configure("info", stream=open(log_path, "a", encoding="utf-8"))  # noqa: SIM115
        print(f"astrid: kernel log {log_path}, audit {opts.home / 'audit.jsonl'}",
              file=err, flush=True)
        body()
    finally:
        problem = umount(opts)
    if problem is not None:
        raise RunError(f"could not unmount {opts.mount}: {problem}; the session is kept; "
                       f"run `astrid-fs umount {opts.mount}`")
    print(f"astrid: unmounted {opts.mount}.\n{_review_hint(opts)}", file=err, flush=True)


def run(opts: RunOptions, stdin: IO[str] = sys.stdin, out: IO[str] = sys.stdout,
        err: IO[str] = sys.stderr) -> int:
    """Mount, talk, unmount. Raises `KernelError` (one line) on bad input."""
    in_mounted_session(opts, err, lambda: trio.run(session_loop, opts, stdin, out, err))
    return 0


def cmd_run(args: argparse.Namespace, lockfile: Path) -> int:
    """The `astrid run` verb (client_cli dispatches here)."""
    try:
        return run(options(args, lockfile))
    except BaseExceptionGroup as group:
        first = first_kernel_error(group)
        if first is None:
            raise
        raise first from None


def verb(lockfile: Callable[[argparse.Namespace], Path]
         ) -> Callable[[argparse.Namespace], int]:
    """`astrid run` for the client's command table; `lockfile` resolves --lockfile."""
    return lambda args: cmd_run(args, lockfile(args).resolve())




__all__ = ["RunError", "RunOptions", "SessionKernel", "add_parser", "cmd_run",
           "in_mounted_session", "run", "running_plugins", "session_kernel", "verb"]
