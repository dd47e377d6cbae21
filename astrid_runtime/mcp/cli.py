"""`astrid mcp`: a session's tools served over the Model Context Protocol (stdio).

    astrid mcp --session NAME [--lower DIR] [--policy FILE] [--mode MODE]

Mounts the session and boots the kernel over it exactly as `astrid run`
does (session_kernel.session_kernel: pinned plugins, approvals, audit, commit
path, control socket), then speaks MCP on stdin/stdout instead of reading
lines: an MCP client (a coding agent) lists and calls the file tool's
operations (server.py). Asks that need a person are answered from another
shell (`astrid approvals`, `astrid approve ID`). The client closing stdin,
Ctrl-C or SIGTERM stops the kernel and unmounts; the session is kept for
`astrid-fs diff` / `commit`. Nothing but MCP is written to stdout.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import trio

from astrid_runtime.dashboard.cli import start_dashboard
from astrid_runtime.kernel import Kernel
from astrid_runtime.mcp.filetool import FileToolClient
from astrid_runtime.run_cli import options
from astrid_runtime.session_kernel import (
    RunError,
    RunOptions,
    add_session_arguments,
    run_in_session,
    running_plugins,
    session_kernel,
)

TOOL_PLUGIN = "filetool"


def add_parser(sub: Any) -> None:
    """Register `astrid mcp` on the client's subcommand parsers."""
    p = sub.add_parser(
        "mcp", help="serve a session's tools to an MCP client (stdio)",
        description="Mount session NAME over --lower, boot the kernel with the pinned "
                    "plugins and serve the file tool (read/write/append/replace/list, "
                    "commit after approval) over the Model Context Protocol on stdio. "
                    "Every call goes through the kernel's grants, approvals and audit.",
        epilog="example (an MCP client's server command):\n"
               "  astrid --lockfile /path/plugins.lock mcp --session fix-bug --lower ~/project\n"
               "answer its asks from a shell: astrid approvals; astrid approve ID",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_session_arguments(p, session_required=True)
    p.add_argument("--reply-timeout", type=float, default=30.0,
                   help="seconds a tool call waits for the file tool (a commit also waits "
                        "for as long as the policy lets an ask wait)")
    p.add_argument("--dashboard", action="store_true",
                   help="also serve the web dashboard on 127.0.0.1 (login URL on stderr), "
                        "where a person answers the asks")
    p.add_argument("--dashboard-port", type=int, default=0,
                   help="the dashboard's port (default: any free port)")
    p.set_defaults(json=False, no_record=False)


async def serve(opts: RunOptions, err: IO[str], dashboard_port: int | None = None) -> None:
    """Boot the session's kernel and serve MCP on stdio until the client leaves or a
    signal comes; with `dashboard_port`, the web dashboard too."""
    from astrid_runtime.mcp.server import SessionTools, build_server  # the SDK: ~2 s import

    clients: list[FileToolClient] = []

    def attach(kernel: Kernel) -> None:
        clients.append(FileToolClient(kernel.bus, kernel.publish))

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with session_kernel(opts, err, attach) as booted:
            up = running_plugins(booted.kernel)
            if TOOL_PLUGIN not in up:
                raise RunError(f"the {TOOL_PLUGIN} plugin is not running (plugins up: "
                               f"{', '.join(up) or 'none'}); pin it with `astrid plugin "
                               f"install plugins/{TOOL_PLUGIN}`")
            if dashboard_port is not None:
                await start_dashboard(booted, opts, dashboard_port, err)
            tools = SessionTools(clients[0], opts.reply_timeout_s, opts.policy.ask_timeout_s,
                                 opts.session, opts.home)
            server = build_server(tools, opts.session)
            print(f"astrid: serving session {opts.session} ({opts.mount}) over MCP on stdio; "
                  f"approvals: astrid --socket {booted.socket} approvals; mode "
                  f"{opts.policy.mode}", file=err, flush=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(clients[0].serve)

                async def stdio_then_stop() -> None:
                    await server.run_stdio_async()  # returns when the client closes stdin
                    nursery.cancel_scope.cancel()

                async def on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stdio_then_stop)
                nursery.start_soon(on_signal)


def cmd_mcp(args: argparse.Namespace, lockfile: Path) -> int:
    """The `astrid mcp` verb."""
    if not 0 <= args.dashboard_port <= 65535:
        raise RunError(f"--dashboard-port {args.dashboard_port}: not a TCP port (0-65535)")
    opts = options(args, lockfile)
    port = args.dashboard_port if args.dashboard else None
    return run_in_session(opts, sys.stderr, lambda: trio.run(serve, opts, sys.stderr, port))


def verb(lockfile: Callable[[argparse.Namespace], Path]
         ) -> Callable[[argparse.Namespace], int]:
    """`astrid mcp` for the client's command table; `lockfile` resolves --lockfile."""
    return lambda args: cmd_mcp(args, lockfile(args).resolve())


__all__ = ["add_parser", "cmd_mcp", "serve", "verb"]
