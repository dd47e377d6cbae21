"""A kernel over a mounted astrid-fs session, as `astrid run`, `astrid mcp` and
`astrid dashboard` boot it: the session mounted by `astrid-fs mount` (a separate
daemon, so the kernel's own VFS calls never wait on a FUSE server in their
process), then the kernel in this process from `plugins.lock` -- the same
`open_kernel` + `Kernel.boot` as astridd -- with each plugin's VFS root
`workspace` on the mount, the approval pipeline (policy file, kernel key, audit
trail), the kernel's commit path, the control socket, the recorder tied to the
session's snapshots, and the configured MCP tool providers. The verbs around it
(run_cli.py, mcp/cli.py, dashboard/cli.py) only talk to it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import trio

from astrid_fs.pyexec import python_module
from astrid_runtime import logs
from astrid_runtime.abi.context import KvBackend, PluginContext
from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.pipeline import ApprovalPipeline
from astrid_runtime.approval.policy import MODES, POLICY_FILE, Policy
from astrid_runtime.approval.service import AUDIT_FILE, Approvals, start_approvals
from astrid_runtime.commit_service import CommitService
from astrid_runtime.config import default_socket
from astrid_runtime.control import ControlServer
from astrid_runtime.dashboard.app import DEFAULT_FRONTEND
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import ControlError, KernelError, first_kernel_error
from astrid_runtime.kernel import BootPlan, Kernel, open_kernel
from astrid_runtime.mcp import provider as mcp_provider
from astrid_runtime.net import provider as agent_provider
from astrid_runtime.recorder import recorder
from astrid_runtime.recorder.settings import RecordingSettings
from astrid_runtime.recorder.store import RecordingBusy
from astrid_runtime.recorder.timeline import Timeline
from astrid_runtime.supervisor import State
from astrid_runtime.vfs import PluginVfs

ASTRID_FS = tuple(python_module("astrid_fs.cli"))
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
    #: The web dashboard's port (0: any free one); None: no dashboard, and its
    #: frontend plugin is not booted.
    dashboard_port: int | None = None


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
            if opts.dashboard_port is None:  # a plugin dir is named for its plugin
                sources = tuple(s for s in sources if s.name != DEFAULT_FRONTEND)
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


def pending_changes(opts: RunOptions) -> int | None:
    """How many changes the session still holds over its lower (`astrid-fs
    diff --json`); None when that cannot be said."""
    try:
        done = _astrid_fs("diff", "--json", opts.session)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        changes = json.loads(done.stdout)
    except ValueError:
        return None
    return len(changes) if isinstance(changes, list) else None


def _review_hint(opts: RunOptions, pending: int | None) -> str:
    """What a person can do with the session now. One whose changes all
    landed (the agent's commit was approved) or that made none is not
    offered a commit: it would land nothing."""
    name = opts.session
    if pending == 0:
        return (f"Session '{name}' kept; nothing in it differs from {opts.lower} "
                f"(its changes landed, or it made none):\n"
                f"  astrid-fs rm {name}               # delete it (--force: with its snapshots)")
    counted = "" if pending is None else f" ({pending} change{'s' if pending != 1 else ''})"
    return (f"Session '{name}' kept for review{counted}:\n"
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
    hint = _review_hint(opts, pending_changes(opts))
    print(f"astrid: unmounted {opts.mount}.\n{hint}", file=err, flush=True)


def run_in_session(opts: RunOptions, err: IO[str], main: Callable[[], object]) -> int:
    """`in_mounted_session`, with an error from inside the kernel's nurseries
    unwrapped to its first `KernelError` (one line for the person); 0."""
    try:
        in_mounted_session(opts, err, main)
    except BaseExceptionGroup as group:
        first = first_kernel_error(group)
        if first is None:
            raise
        raise first from None
    return 0


def add_session_arguments(p: argparse.ArgumentParser, *, session_required: bool) -> None:
    """The options of every verb that boots a kernel over a session (run, mcp,
    dashboard): which session, over what, mounted where, under which policy."""
    if session_required:
        p.add_argument("--session", required=True, help="session name (created or reopened)")
    else:
        p.add_argument("--session", help="session name (default: run-YYYYMMDD-HHMMSS)")
    p.add_argument("--lower", type=Path, default=Path("."),
                   help="the project directory (default: the current directory)")
    p.add_argument("--mount", type=Path, help="mount point (default: $ASTRID_HOME/mnt/SESSION)")
    p.add_argument("--policy", type=Path,
                   help=f"approval policy TOML (default: $ASTRID_HOME/{POLICY_FILE} if it "
                        "exists; otherwise every request is 'ask', hence denied)")
    p.add_argument("--mode", choices=tuple(MODES),
                   help="approval mode, overriding the policy file's (default: guided)")
    p.add_argument("--kv", help="KV URL (default: mem://, nothing kept across runs)")
    p.add_argument("--socket", type=Path,
                   help="control socket (default: $ASTRID_HOME/astridd.sock when no kernel "
                        "serves it, else $ASTRID_HOME/run-SESSION.sock)")
