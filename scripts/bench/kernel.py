#!/usr/bin/env python3
"""Kernel benchmarks: host-import round trip, export call, list<u8> marshaling
(ours vs stock wasmtime-py), bus latency and throughput between two plugins
(kernel_bus.py; with the recorder off and on too), cold start with and without
the compile cache, one WASM interceptor check, one cross-component call (a
plugin calling another plugin's export; kernel_links.py).

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
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio
from bench_host import add_page_reporting_flag, steady_host
from wasmtime import Store, WasiConfig
from wasmtime.component import Component, Linker, Variant

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "runtime" / "components"))

import testcomponents  # noqa: E402
from kernel_bus import bench_bus, bench_recording  # noqa: E402  (beside this script)
from kernel_links import bench_links  # noqa: E402  (beside this script)
from kernel_rss import bench_rss  # noqa: E402  (beside this script)
from kernel_timing import timed, us  # noqa: E402  (beside this script)
from testkit import MemoryKv  # noqa: E402

from astrid_runtime import logs  # noqa: E402
from astrid_runtime.abi.context import PluginContext  # noqa: E402
from astrid_runtime.abi.world import PluginLinker  # noqa: E402
from astrid_runtime.bus import Bus, Doorbell  # noqa: E402
from astrid_runtime.engine import EngineSettings, KernelEngine  # noqa: E402
from astrid_runtime.grants import Grants, Limits  # noqa: E402
from astrid_runtime.logs import KernelLog  # noqa: E402
from astrid_runtime.sandbox import PluginInstance  # noqa: E402

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
    add_page_reporting_flag(parser)
    args = parser.parse_args()
    with steady_host(args.keep_page_reporting) as host:
        print(host, flush=True)
        run(args)


def run(args: argparse.Namespace) -> None:
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
