"""`astrid dashboard`: a session's kernel with its web dashboard, for a browser.

    astrid dashboard --session NAME [--lower DIR] [--port N] [--policy FILE]

Mounts the session and boots the kernel as `astrid run` does
(session_kernel.session_kernel), with the frontend plugin `dashboard`; then the
kernel listens on 127.0.0.1 (`--port`, default any free port) and prints a login
URL carrying a fresh token (also written, mode 0600, to
$ASTRID_HOME/dashboard-SESSION.url). The kernel checks every request (app.py) and
hands the logged-in ones to the plugin, which serves the pages: the sessions and
their diffs, the plugins, the live bus, and the pending asks with buttons that
answer them. Plugins are driven from elsewhere:
`astrid --socket SOCK publish tools.fs 'write a.md hi'`, or `astrid mcp`
sessions. Ctrl-C or SIGTERM stops and unmounts.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import trio

from astrid_runtime.atomic import write_atomic
from astrid_runtime.dashboard import http
from astrid_runtime.dashboard.app import DEFAULT_FRONTEND, Dashboard, KernelView
from astrid_runtime.run_cli import options
from astrid_runtime.session_kernel import (
    RunError,
    RunOptions,
    SessionKernel,
    add_session_arguments,
    run_in_session,
    session_kernel,
)

HOST = "127.0.0.1"


def add_parser(sub: Any) -> None:
    """Register `astrid dashboard` on the client's subcommand parsers."""
    p = sub.add_parser(
        "dashboard", help="a session's kernel with a web dashboard on 127.0.0.1",
        description="Mount session NAME over --lower, boot the kernel with the pinned "
                    "plugins and serve the dashboard (sessions and diffs, the live bus, "
                    "pending approvals answerable in the browser) behind a login token.",
        epilog="example: astrid dashboard --session fix-bug --lower ~/project --port 8377\n"
               "then open the printed http://127.0.0.1:8377/login?token=... URL",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_session_arguments(p, session_required=True)
    p.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    p.set_defaults(json=False, no_record=False, reply_timeout=30.0, dashboard=True)


async def start_dashboard(booted: SessionKernel, opts: RunOptions, port: int,
                          err: IO[str]) -> str:
    """Serve the dashboard from the kernel's nursery (the kernel owns the socket); the
    login URL, also printed on `err` and written to $ASTRID_HOME/dashboard-SESSION.url."""
    token = secrets.token_urlsafe(32)
    kernel = booted.kernel
    view = KernelView(booted.approvals, opts.home, opts.session, kernel.status,
                      trio.lowlevel.current_trio_token())
    for sup in kernel.supervisors.values():  # answered only under a dashboard.read grant
        sup.context.frontend = view
    dashboard = Dashboard(kernel.bus, token, lambda: kernel.supervisors)
    bound: list[int] = []

    async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            try:
                bound.append(await nursery.start(http.serve, dashboard.handle, HOST, port))
            except OSError as e:
                raise RunError(f"--port {port}: cannot listen on {HOST}: {e.strerror}") from None
            task_status.started()

    await booted.kernel.start_service(serve)
    dashboard.hosts = frozenset({f"{HOST}:{bound[0]}", f"localhost:{bound[0]}"})
    url = f"http://{HOST}:{bound[0]}/login?token={token}"
    write_atomic(opts.home / f"dashboard-{opts.session}.url", (url + "\n").encode())
    print(f"astrid: dashboard {url}", file=err, flush=True)
    if DEFAULT_FRONTEND not in kernel.supervisors:
        print(f"astrid: the {DEFAULT_FRONTEND} plugin is not running (pin it with `astrid "
              f"plugin install plugins/{DEFAULT_FRONTEND}`): {url.split('/login')[0]}/ has "
              "no pages", file=err, flush=True)
    return url


async def serve_dashboard(opts: RunOptions, port: int, err: IO[str]) -> None:
    """Boot the session's kernel with its dashboard; run until a signal."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with session_kernel(opts, err) as booted:
            await start_dashboard(booted, opts, port, err)
            print(f"astrid: session {opts.session} mounted at {opts.mount}; control socket "
                  f"{booted.socket}; Ctrl-C ends.", file=err, flush=True)
            async for _ in signals:
                break


def cmd_dashboard(args: argparse.Namespace, lockfile: Path) -> int:
    """The `astrid dashboard` verb."""
    if not 0 <= args.port <= 65535:
        raise RunError(f"--port {args.port}: not a TCP port (0-65535; 0: any free port)")
    args.dashboard_port = args.port
    opts = options(args, lockfile)
    return run_in_session(opts, sys.stderr,
                          lambda: trio.run(serve_dashboard, opts, args.port, sys.stderr))


def verb(lockfile: Callable[[argparse.Namespace], Path]
         ) -> Callable[[argparse.Namespace], int]:
    """`astrid dashboard` for the client's command table."""
    return lambda args: cmd_dashboard(args, lockfile(args).resolve())


__all__ = ["add_parser", "cmd_dashboard", "start_dashboard", "verb"]
