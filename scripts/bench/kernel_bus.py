"""Kernel bench, bus leg: latency and throughput between two relay plugins in one
kernel (`kernel.py`'s bus table), and the same with the recorder off and on,
interleaved (`kernel.py --recording`, issue 15).

The relay chain is client → A → B → tap: per message 3 deliveries and 2 plugin
calls. Runs need the test components' paths on `sys.path` (kernel.py sets them).
"""

from __future__ import annotations

import functools
import gc
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import testcomponents
import trio
from kernel_timing import us
from testkit import MemoryKv
from wasmtime.component import Component

from astrid_runtime.bus import Tap
from astrid_runtime.engine import EngineSettings, KernelEngine
from astrid_runtime.grants import Grants, Limits
from astrid_runtime.kernel import open_kernel
from astrid_runtime.recorder import recorder
from astrid_runtime.recorder.settings import RecordingSettings
from astrid_runtime.supervisor import PluginSpec, State


@dataclass(frozen=True)
class BusRun:
    """One run of `bench_bus` (seconds)."""

    first_p50: float
    first_p99: float
    a_to_b_p50: float
    a_to_b_p99: float
    rate: float
    cpu_per_msg: float
    #: Garbage collections (all generations) during the throughput run.
    collections: int

    def rows(self) -> list[str]:
        return [
            f"| client publish → plugin A → A's publish seen | {us(self.first_p50)} | "
            f"{us(self.first_p99)} |",
            f"| plugin A publish → plugin B `on-message` → B's publish seen | "
            f"{us(self.a_to_b_p50)} | {us(self.a_to_b_p99)} |",
            f"| throughput client → A → B → tap (64 B payloads) | {self.rate:,.0f} msg/s | |",
            f"| kernel CPU per message of that run (3 deliveries) | {us(self.cpu_per_msg)} | |",
        ]


def _collections() -> int:
    return sum(g["collections"] for g in gc.get_stats())


async def bench_bus(engine: KernelEngine, comps: dict[str, Component], quick: bool,
                    record: Path | None = None, *, pings: int | None = None,
                    total: int | None = None) -> BusRun:
    """`pings` sequential round trips (latency), then `total` pipelined messages."""
    limits = Limits(mailbox=10_000, publish_per_sec=10**9)
    async with open_kernel(engine, MemoryKv()) as kernel:
        if record is not None:  # the recorded bus (issue 15), its store under `record`
            await kernel.start_service(recorder.serve, kernel, RecordingSettings(), record)
        for name, sub in (("a", "lat"), ("b", "lat.r")):
            sup = kernel.start(PluginSpec(name, "0", comps["relay"], sub,
                                          Grants(publish=("lat.>",), subscribe=(sub,)), limits))
            await sup.wait_for(lambda s: s.state is State.RUNNING)
        hop = Tap(kernel.bus, "lat.r")
        end = Tap(kernel.bus, "lat.r.r")
        first, both = [], []
        for _ in range(pings or (300 if quick else 3000)):
            t = time.perf_counter()
            kernel.publish("lat", b"ping")
            await hop.receive()
            t1 = time.perf_counter()
            await end.receive()
            t2 = time.perf_counter()
            first.append(t1 - t)
            both.append(t2 - t)
        hop.close()
        a_to_b = [b - a for a, b in zip(first, both, strict=True)]
        # Pipelined, with a window of messages in flight so that no mailbox
        # overflows (a refused publish inside the chain would lose a message).
        total, window = total or (5000 if quick else 50000), 128
        collections = _collections()
        t = time.perf_counter()
        cpu = time.process_time()
        sent = got = 0
        while got < total:
            if sent < total and sent - got < window:
                kernel.publish("lat", b"x" * 64)
                sent += 1
                continue
            await end.receive()
            got += 1
        rate = total / (time.perf_counter() - t)
        cpu_per_msg = (time.process_time() - cpu) / total
        collections = _collections() - collections

    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[int(q * (len(xs) - 1))]

    return BusRun(pct(first, .5), pct(first, .99), pct(a_to_b, .5), pct(a_to_b, .99), rate,
                  cpu_per_msg, collections)


def bench_recording(quick: bool, sets: int, messages: int | None) -> None:
    """Bus latency and throughput with the recorder off and on, interleaved in ABBA
    order (off, on, on, off, ...; one engine), each run with the load average at its
    end; then the medians of each setting, their ratio, and the median of the ratios
    of adjacent off/on runs. This machine's speed drifts by 2x within minutes (the
    same "off" run: 1,700-4,300 msg/s, 2026-12-01 19:25 UTC), so the adjacent pairs
    are the number to read: many short runs beat few long ones."""
    engine = KernelEngine(EngineSettings())
    comps = {"relay": engine.compile(testcomponents.build_wat("relay").read_bytes()).component}
    print("| run | recording | msg/s | A → B p50 | A → B p99 | CPU per message | GC runs | "
          "load (1 min) |\n|---|---|---|---|---|---|---|---|", flush=True)
    runs: dict[str, list[BusRun]] = {"off": [], "on": []}
    order = ["off", "on", "on", "off"] * ((sets + 1) // 2)
    rate_pairs: list[float] = []
    cpu_pairs: list[float] = []
    prev: BusRun | None = None
    for n, label in enumerate(order[:2 * sets]):
        with tempfile.TemporaryDirectory() as home:
            run = trio.run(functools.partial(
                bench_bus, engine, comps, quick, Path(home) if label == "on" else None,
                pings=300 if messages else None, total=messages))
        runs[label].append(run)
        if n % 2 and prev is not None:
            on, off = (run, prev) if label == "on" else (prev, run)
            rate_pairs.append(on.rate / off.rate)
            cpu_pairs.append(on.cpu_per_msg / off.cpu_per_msg)
        prev = run
        print(f"| {n + 1} | {label} | {run.rate:,.0f} | {us(run.a_to_b_p50)} | "
              f"{us(run.a_to_b_p99)} | {us(run.cpu_per_msg)} | {run.collections} | "
              f"{os.getloadavg()[0]:.2f} |", flush=True)
    med = {label: (statistics.median(r.rate for r in rs),
                   statistics.median(r.a_to_b_p50 for r in rs),
                   statistics.median(r.cpu_per_msg for r in rs)) for label, rs in runs.items()}
    for label, (rate, p50, cpu) in med.items():
        print(f"| median | {label} | {rate:,.0f} | {us(p50)} | | {us(cpu)} | | |")
    print(f"\nthroughput on/off {med['on'][0] / med['off'][0]:.3f}, "
          f"p50 on/off {med['on'][1] / med['off'][1]:.3f}, "
          f"CPU per message on/off {med['on'][2] / med['off'][2]:.3f} ({sets} sets)")
    print(f"adjacent pairs: throughput on/off median {statistics.median(rate_pairs):.3f} "
          f"(quartiles {_quartiles(rate_pairs)}), CPU per message on/off median "
          f"{statistics.median(cpu_pairs):.3f} ({len(rate_pairs)} pairs)")
    blocks = 4 * max(10, sets)
    offs, ons = trio.run(bench_recording_blocks, engine, comps, blocks, messages or 2000)
    # offs[k] and ons[k] are adjacent blocks (ABBA: off on | on off | off on ...)
    pairs = [b / a for a, b in zip(offs, ons, strict=True)]
    print(f"one kernel, switched between blocks of {messages or 2000:,} messages "
          f"({blocks} blocks, ABBA): off {statistics.median(offs):,.0f} msg/s, on "
          f"{statistics.median(ons):,.0f} msg/s; on/off of the medians "
          f"{statistics.median(ons) / statistics.median(offs):.3f}, adjacent blocks' median "
          f"{statistics.median(pairs):.3f} (quartiles {_quartiles(pairs)}), load "
          f"{os.getloadavg()[0]:.2f}")


async def bench_recording_blocks(engine: KernelEngine, comps: dict[str, Component],
                                 blocks: int, block: int) -> tuple[list[float], list[float]]:
    """One recording kernel, recording switched off and on between blocks of `block`
    pipelined messages (ABBA order): the machine's drift, minutes long, cancels out
    between adjacent blocks a second apart. Switching off takes out exactly what
    recording adds per message (the bus's `on_record`, each plugin's observer and
    host-call tap); what stays is the recorder's idle flush loop and its idle writer
    process. Returns the throughput of the off blocks and of the on blocks, in order."""
    limits = Limits(mailbox=10_000, publish_per_sec=10**9)
    with tempfile.TemporaryDirectory() as home:
        async with open_kernel(engine, MemoryKv()) as kernel:
            await kernel.start_service(recorder.serve, kernel, RecordingSettings(), Path(home))
            hooks = []
            for name, sub in (("a", "lat"), ("b", "lat.r")):
                sup = kernel.start(PluginSpec(name, "0", comps["relay"], sub,
                                              Grants(publish=("lat.>",), subscribe=(sub,)),
                                              limits))
                await sup.wait_for(lambda s: s.state is State.RUNNING)
                assert sup.instance is not None
                funcs = sup.instance._linker.funcs  # bench only: the linker's host-call tap
                hooks.append((sup.context, sup.context.observer, funcs, funcs.tap))
            record = kernel.bus.on_record
            end = Tap(kernel.bus, "lat.r.r")

            def switch(on: bool) -> None:
                kernel.bus.on_record = record if on else None
                for ctx, observer, funcs, tap in hooks:
                    ctx.observer = observer if on else None
                    funcs.tap = tap if on else None

            async def run_block() -> float:
                sent = got = 0
                t = time.perf_counter()
                while got < block:
                    if sent < block and sent - got < 128:
                        kernel.publish("lat", b"x" * 64)
                        sent += 1
                        continue
                    await end.receive()
                    got += 1
                return block / (time.perf_counter() - t)

            await run_block()  # warm up
            rates: dict[bool, list[float]] = {False: [], True: []}
            for n in range(blocks):
                on = n % 4 in (1, 2)
                switch(on)
                rates[on].append(await run_block())
            switch(True)
            end.close()
    return rates[False], rates[True]


def _quartiles(xs: list[float]) -> str:
    if len(xs) < 4:
        return " / ".join(f"{x:.2f}" for x in sorted(xs))
    q = statistics.quantiles(xs, n=4)
    return f"{q[0]:.2f} / {q[2]:.2f}"
