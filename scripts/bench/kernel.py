#!/usr/bin/env python3
"""Kernel benchmarks: host-import round trip, export call, list<u8> marshaling
(ours vs stock wasmtime-py), bus latency and throughput between two plugins,
cold start with and without the compile cache, one WASM interceptor check,
one cross-component call (a plugin calling another plugin's export;
kernel_links.py).

    .venv/bin/python scripts/bench/kernel.py            # print a markdown report
    .venv/bin/python scripts/bench/kernel.py --quick    # fewer iterations
    .venv/bin/python scripts/bench/kernel.py --interceptors   # only the interceptor checks
    .venv/bin/python scripts/bench/kernel.py --links          # only the cross-component call
    .venv/bin/python scripts/bench/kernel.py --rss            # kernel RSS per shipped plugin
    .venv/bin/python scripts/bench/kernel.py --recording --sets 3   # bus, recording off/on

Numbers are medians (or p50/p99) of wall-clock time on this machine; trust
ratios more than absolutes on a shared box. The test components are built
from tests/runtime/components (cached).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from wasmtime import Store, WasiConfig
from wasmtime.component import Component, Linker, Variant

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "runtime" / "components"))

import testcomponents  # noqa: E402
from kernel_links import bench_links  # noqa: E402  (beside this script)
from kernel_rss import bench_rss  # noqa: E402  (beside this script)
from kernel_timing import timed, us  # noqa: E402  (beside this script)
from testkit import MemoryKv  # noqa: E402

from astrid_runtime import logs  # noqa: E402
from astrid_runtime.abi.context import PluginContext  # noqa: E402
from astrid_runtime.abi.world import PluginLinker  # noqa: E402
from astrid_runtime.bus import Bus, Doorbell, Tap  # noqa: E402
from astrid_runtime.engine import EngineSettings, KernelEngine  # noqa: E402
from astrid_runtime.grants import Grants, Limits  # noqa: E402
from astrid_runtime.kernel import open_kernel  # noqa: E402
from astrid_runtime.logs import KernelLog  # noqa: E402
from astrid_runtime.recorder import recorder  # noqa: E402
from astrid_runtime.recorder.settings import RecordingSettings  # noqa: E402
from astrid_runtime.sandbox import PluginInstance  # noqa: E402
from astrid_runtime.supervisor import PluginSpec, State  # noqa: E402

KIB = 1024


def instance(engine: KernelEngine, component: Component, name: str,
             grants: Grants) -> PluginInstance:
    """A bare instance (no supervisor), built the way the kernel builds one."""
    bus = Bus()
    bell = Doorbell(trio.lowlevel.current_trio_token(), threading.get_ident())
    limits = Limits(mailbox=100_000, publish_per_sec=10**9, max_payload_bytes=8 * 1024 * KIB)
    ep = bus.attach(name, grants, limits, bell)
    log = KernelLog()
    ctx = PluginContext(name, grants, limits, ep, MemoryKv(), log.plugin_line, log.host_bug)
    inst = PluginInstance(name, engine, component, PluginLinker(engine.engine, ctx), limits)
    inst.init("bench.sink")
    return inst


def stock_instance(engine: KernelEngine, component: Component) -> tuple[Store, Any]:
    """The same component through stock wasmtime-py: add_func host functions."""
    linker = Linker(engine.engine)
    linker.add_wasip2()
    with linker.root() as root:
        with root.add_instance("astrid:kernel/bus@0.1.0") as bus:
            bus.add_func("subscribe", lambda _s, _p: 1)
            bus.add_func("publish", lambda _s, _t, _p: None)
        with root.add_instance("astrid:kernel/log@0.1.0") as log:
            log.add_func("write", lambda _s, _l, _m, _f: None)
    store = Store(engine.engine)
    store.set_wasi(WasiConfig())
    store.set_fuel(2**62)
    store.set_epoch_deadline(2**40)
    inst = linker.instantiate(store, component)
    init = inst.get_func(store, "init")
    result = init(store, "bench.sink")
    assert result is None or not isinstance(result, Variant), result
    return store, inst.get_func(store, "on-message")


def bench_calls(engine: KernelEngine, comps: dict[str, Component], quick: bool) -> list[str]:
    rows = []
    inst = instance(engine, comps["bench"], "bench", Grants())
    n = 200 if quick else 2000
    export = timed(lambda: inst.on_message("b", b""), n)
    calls = 2000 if quick else 20000
    payload = calls.to_bytes(4, "little")
    loop = timed(lambda: inst.on_message("b", payload), 5 if quick else 15)
    host = (loop - export) / calls
    store, stock_on = stock_instance(engine, comps["bench"])
    stock_export = timed(lambda: stock_on(store, "b", b""), n)
    stock_loop = timed(lambda: stock_on(store, "b", payload), 3 if quick else 7)
    stock_host = (stock_loop - stock_export) / calls
    rows.append(f"| export call `on-message` (empty payload) | {us(export)} | {us(stock_export)} |")
    rows.append(f"| host-import round trip `log.write` | {us(host)} | {us(stock_host)} |")
    return rows


def bench_bytes(engine: KernelEngine, comps: dict[str, Component], quick: bool) -> list[str]:
    rows = []
    inst = instance(engine, comps["bench"], "bench", Grants())
    relay = instance(engine, comps["relay"], "relay", Grants(publish=(">",), subscribe=(">",)))
    s_store, s_on = stock_instance(engine, comps["bench"])
    r_store, r_on = stock_instance(engine, comps["relay"])
    empty = timed(lambda: inst.on_message("b", b""), 200)
    for size in (KIB, 64 * KIB, 1024 * KIB):
        payload = b"\0" * size  # first 4 bytes 0: no host calls
        reps = 3 if size == 1024 * KIB else (20 if quick else 100)
        stock_reps = 1 if size == 1024 * KIB else (3 if quick else 10)
        ours_in = timed(lambda p=payload: inst.on_message("b", p), reps) - empty  # type: ignore[misc]
        stock_in = timed(lambda p=payload: s_on(s_store, "b", p), stock_reps) - empty  # type: ignore[misc]
        ours_rt = timed(lambda p=payload: relay.on_message("x", p), reps)  # type: ignore[misc]
        stock_rt = timed(lambda p=payload: r_on(r_store, "x", p), stock_reps)  # type: ignore[misc]
        label = f"{size // KIB} KiB"
        ours_out, stock_out = ours_rt - ours_in - empty, stock_rt - stock_in - empty
        rows.append(f"| {label} host→guest (`on-message` argument) | {us(ours_in)} | "
                    f"{us(stock_in)} | {stock_in / ours_in:,.0f}x |")
        rows.append(f"| {label} guest→host (`bus.publish` argument) | {us(ours_out)} | "
                    f"{us(stock_out)} | {stock_out / ours_out:,.0f}x |")
        rows.append(f"| {label} relay round trip (in + out) | {us(ours_rt)} | {us(stock_rt)} | "
                    f"{stock_rt / ours_rt:,.0f}x |")
    return rows


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


def bench_cold_start(comps_paths: dict[str, Path]) -> list[str]:
    rows = []
    wasm = comps_paths["pyecho"].read_bytes()
    with tempfile.TemporaryDirectory() as cache:
        for label in ("no cache (compile)", "warm cache (deserialize)"):
            engine = KernelEngine(cache_dir=Path(cache))
            t = time.perf_counter()
            compiled = engine.compile(wasm)
            t_compile = time.perf_counter() - t

            async def start(component: Component = compiled.component,
                            eng: KernelEngine = engine) -> float:
                t0 = time.perf_counter()
                instance(eng, component, "pyecho", Grants(subscribe=(">",)))
                return time.perf_counter() - t0

            t_start = trio.run(start)
            rows.append(f"| componentize-py plugin ({len(wasm) / 2**20:.0f} MiB), {label} | "
                        f"{us(t_compile)} | {us(t_start)} | {us(t_compile + t_start)} |")
    return rows


def bench_interceptors(quick: bool) -> list[str]:
    """One `check` of each shipped C interceptor, and a whole `cap.request` through both."""
    from astrid_runtime.approval.audit import AuditLog
    from astrid_runtime.approval.interceptors import Limits as CheckLimits
    from astrid_runtime.approval.interceptors import WasmInterceptor
    from astrid_runtime.approval.pipeline import Action, ApprovalPipeline
    from astrid_runtime.approval.policy import Policy
    from astrid_runtime.approval.token import TokenIssuer

    engine = KernelEngine(EngineSettings())
    limits = CheckLimits(fuel=1_000_000, timeout_ms=20, memory_bytes=2 * 1024 * 1024)
    stages = []
    for name, config in (("path-guard", "deny fs.* workspace/.git/*;ask net.http http://*"),
                         ("secret-filter", "deny")):
        wasm = (ROOT / "plugins" / name / f"{name}.wasm").read_bytes()
        stages.append(WasmInterceptor(name, engine, engine.compile(wasm).component, config,
                                      limits))
    action = Action("filetool", "fs.commit", "workspace/docs/a.md,src/greet.py,NOTES.md",
                    (("paths", "docs/a.md,src/greet.py,NOTES.md"),
                     ("message", "land the reviewed edits from the agent session")))
    repeat = 500 if quick else 5000
    rows = []
    for stage in stages:
        assert stage.check(action) == ("allow", ""), stage.check(action)
        for _ in range(repeat):  # warm up: the first thousands of calls run ~1.5x slower
            stage.check(action)
        rows.append(f"| `{stage.name}` check (C, {len(action.resource)}-byte resource, "
                    f"2 details) | {us(timed(lambda s=stage: s.check(action), repeat))} |")
    pipeline = ApprovalPipeline(TokenIssuer(b"k" * 32), AuditLog(None),
                                Policy(default="allow"), interceptors=stages)
    bare = ApprovalPipeline(TokenIssuer(b"k" * 32), AuditLog(None), Policy(default="allow"))
    grant = ("fs.commit",)
    rows.append(f"| `cap.request` pipeline, no interceptors | "
                f"{us(timed(lambda: bare.request(action, grant), repeat))} |")
    rows.append(f"| `cap.request` pipeline, both interceptors | "
                f"{us(timed(lambda: pipeline.request(action, grant), repeat))} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--interceptors", action="store_true",
                        help="only the interceptor checks (seconds, not minutes)")
    parser.add_argument("--links", action="store_true",
                        help="only the cross-component call (seconds)")
    parser.add_argument("--recording", action="store_true",
                        help="only the bus, with recording off and on, interleaved (issue 15)")
    parser.add_argument("--sets", type=int, default=3,
                        help="with --recording: how many off/on pairs (default 3)")
    parser.add_argument("--messages", type=int, default=None,
                        help="with --recording: pipelined messages a run (default 50,000; "
                             "fewer and more --sets measure better on a drifting machine)")
    parser.add_argument("--rss", action="store_true",
                        help="only the kernel's RSS per shipped plugin (issue 12)")
    parser.add_argument("--home", type=Path, default=None,
                        help="with --rss: the kernel home whose compile cache is used "
                             "(default: a temporary one, compiled first)")
    args = parser.parse_args()
    logs.configure("error")
    if args.rss:
        with tempfile.TemporaryDirectory() as tmp:
            home = args.home or Path(tmp)
            rows = bench_rss(home)
        print("| kernel RSS (MiB) | total | anonymous | file-backed | this plugin |\n"
              "|---|---|---|---|---|")
        print("\n".join(rows))
        return
    if args.recording:
        bench_recording(args.quick, args.sets, args.messages)
        return
    if args.links:

        async def links_only() -> list[str]:
            return bench_links(KernelEngine(EngineSettings()), args.quick)

        print("| link | median |\n|---|---|")
        print("\n".join(trio.run(links_only)))
        return
    checks = bench_interceptors(args.quick)
    paths = {name: testcomponents.build_wat(name) for name in ("bench", "relay")}
    engine = KernelEngine(EngineSettings())
    comps = {name: engine.compile(paths[name].read_bytes()).component
             for name in ("bench", "relay")}
    if args.interceptors:  # with the export-call baseline, measured in the same run

        async def baseline() -> list[str]:
            return bench_calls(engine, comps, True)

        print("| interceptor | median |\n|---|---|")
        print("\n".join(checks))
        print("\n| baseline (same run) | astrid | stock wasmtime-py |\n|---|---|---|")
        print("\n".join(trio.run(baseline)))
        return
    paths["pyecho"] = testcomponents.build_python("pyecho")

    async def micro() -> tuple[list[str], list[str]]:
        return bench_calls(engine, comps, args.quick), bench_bytes(engine, comps, args.quick)

    calls, sizes = trio.run(micro)

    async def link_rows() -> list[str]:
        return bench_links(engine, args.quick)

    links = trio.run(link_rows)
    bus = trio.run(bench_bus, engine, comps, args.quick).rows()
    cold = bench_cold_start(paths)
    print("| call | astrid | stock wasmtime-py |\n|---|---|---|")
    print("\n".join(calls))
    print("\n| `list<u8>` payload | astrid | stock wasmtime-py | speed-up |\n|---|---|---|---|")
    print("\n".join(sizes))
    print("\n| bus (in-process, two relay plugins) | p50 | p99 |\n|---|---|---|")
    print("\n".join(bus))
    print("\n| cold start | compile / load | instantiate + init | total |\n|---|---|---|---|")
    print("\n".join(cold))
    print("\n| interceptor | median |\n|---|---|")
    print("\n".join(checks))
    print("\n| link | median |\n|---|---|")
    print("\n".join(links))


if __name__ == "__main__":
    main()
