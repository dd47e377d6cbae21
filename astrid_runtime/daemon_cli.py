"""`astridd`: the kernel daemon, in the foreground.

    astridd [--config astridd.toml] [--lockfile plugins.lock] [--socket PATH]
            [--home DIR] [--kv URL|none] [--log-format json|text]

Boots every plugin pinned in the lockfile (or the config's `plugins`),
refusing unverifiable ones with one log line each, serves the control
socket, and shuts down cleanly on SIGINT or SIGTERM (each plugin finishes
its current call; the socket file is removed). Logs are JSON lines on
stderr. Exit codes: 0 clean shutdown, 1 bad config or a service that would
not start, 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path

import trio

from astrid_runtime import logs
from astrid_runtime.abi.context import KvBackend
from astrid_runtime.approval.policy import home_policy
from astrid_runtime.approval.service import start_approvals
from astrid_runtime.config import KernelConfig, default_socket, defaults, load_config
from astrid_runtime.control import ControlServer
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import KernelError, LockfileError, first_kernel_error
from astrid_runtime.identity import read_secret
from astrid_runtime.kernel import BootPlan, Kernel, open_kernel
from astrid_runtime.recorder import recorder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="astridd", description="The Astrid kernel daemon (foreground).",
        epilog="example: astridd --config astridd.toml   (stop with Ctrl-C or SIGTERM)")
    p.add_argument("--config", type=Path, help="astridd.toml (default: none, built-in defaults)")
    p.add_argument("--lockfile", type=Path, help="plugins.lock (default: ./plugins.lock)")
    p.add_argument("--socket", type=Path, help="control socket path")
    p.add_argument("--home", type=Path, help="state directory (default: $ASTRID_HOME)")
    p.add_argument("--kv", help="KV URL: surrealkv://PATH, mem://, ws://HOST:PORT or none")
    p.add_argument("--log-format", choices=("json", "text"))
    p.add_argument("--nats", help="bridge the bus to this NATS server (nats://HOST:PORT)")
    p.add_argument("--no-record", action="store_true",
                   help="do not record the bus (astrid log / replay); see [recording]")
    return p


def resolve_config(args: argparse.Namespace) -> KernelConfig:
    config = load_config(args.config) if args.config else defaults(args.home)
    changes: dict[str, object] = {}
    if args.home and args.config:
        changes["home"] = args.home
        changes["socket"] = default_socket(args.home)
    if args.lockfile:
        if not args.lockfile.exists():  # (named: a typo must not boot an empty kernel)
            raise LockfileError(f"--lockfile {args.lockfile}: no such file")
        changes["lockfile"] = args.lockfile.resolve()
    if args.socket:
        changes["socket"] = args.socket
    if args.kv:
        changes["kv_url"] = None if args.kv == "none" else args.kv
    if args.log_format:
        changes["log_format"] = args.log_format
    if args.nats:
        changes["nats"] = args.nats
    if args.no_record:
        changes["recording"] = dataclasses.replace(config.recording, enabled=False)
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def _open_kv(url: str | None) -> KvBackend | None:
    if url is None:
        return None
    from astrid_runtime.kv import KvStore

    return KvStore(url)


async def run(config: KernelConfig) -> None:
    log = logs.KernelLog()
    engine = KernelEngine(cache_dir=config.cache_dir, epoch_tick_ms=config.epoch_tick_ms)
    kv = await trio.to_thread.run_sync(_open_kv, config.kv_url)
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_kernel(engine, kv, guest_threads=config.guest_threads,
                                   log=log, policy=config.grant_policy) as kernel:
                approvals = await start_approvals(kernel, config.home,
                                                  home_policy(config.home),
                                                  lockfile=config.lockfile)
                server = ControlServer(kernel, config.socket, approvals)
                await kernel.start_service(server.serve)
                await kernel.start_service(recorder.serve, kernel, config.recording, config.home)
                log.event("info", "kernel.listening", socket=str(config.socket),
                          lockfile=str(config.lockfile), kv=config.kv_url or "none")
                await kernel.boot(BootPlan(config.lockfile, config.plugins))
                if config.nats:
                    await kernel.start_service(_bridge, kernel, config)
                async for signum in signals:
                    log.event("info", "kernel.stopping", signal=signal.Signals(signum).name)
                    await kernel.stop()
                    break
    finally:
        close = getattr(kv, "close", None)
        if close is not None:
            await trio.to_thread.run_sync(close)
    log.event("info", "kernel.stopped")




async def _bridge(kernel: Kernel, config: KernelConfig, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    from astrid_runtime.bus.nats import open_nats_bridge
    from astrid_runtime.identity import KernelIdentity

    assert config.nats is not None
    identity = await trio.to_thread.run_sync(KernelIdentity.load, config.home)
    token = None
    if config.nats_token_file is not None:
        token = await trio.to_thread.run_sync(read_secret, config.nats_token_file)
    async with open_nats_bridge(config.nats, identity=identity, peers=config.nats_peers,
                                token=token) as bridge:
        kernel.log.event("info", "bridge.connected", servers=config.nats,
                         instance=bridge.instance_id, kernel=identity.kernel_id,
                         peers=len(config.nats_peers))
        task_status.started()
        await kernel.bridge(bridge, config.nats_subscribe)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = resolve_config(args)
        logs.configure(config.log_level, fmt=config.log_format)
        trio.run(run, config)
    except KernelError as e:
        print(f"astridd: {e}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        first = first_kernel_error(group)
        if first is None:
            raise
        print(f"astridd: {first}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
