"""Kernel bench, links leg (`kernel.py --links`): one small cross-component call.

A WAT importer (tests/runtime/components/links/caller) calls
`astrid:markdown/render.to-html("*hi*")` in the shipped C provider
(plugins/markdown): 4 bytes in, 20 out. Three ways, in the same run:

- through the host shim (abi/links.py): two Stores, the provider's fuel and
  deadline armed per call, the answer measured against the caller's cap:
  what the kernel does;
- the same two components fused by `wasm-tools compose`: one Store, a plain
  call between the two modules (the static trade in docs/plugins.md);
- baseline: the provider's export called from the host (Python codecs).

Times are CPU time of the calling thread (`time.thread_time`): on a loaded
box a loop's wall-clock time counts other processes' turns. A payload of N
bytes makes N calls in one on-message: the difference of two such messages
is the calls alone, without the export call around them.
"""

from __future__ import annotations

import threading

import trio
from kernel_timing import cpu_timed, us
from linkkit import MARKDOWN_DIR, RENDER, build_caller, compose
from wasmtime import Store
from wasmtime.component import Component, Linker

from astrid_runtime.abi.canon import STRING, ResultCodec
from astrid_runtime.abi.context import PluginContext
from astrid_runtime.abi.hostfunc import Signature
from astrid_runtime.abi.links import LinkImports, LinkProvider, Shim
from astrid_runtime.abi.world import GuestFunc, PluginLinker
from astrid_runtime.bus import Bus, Doorbell
from astrid_runtime.engine import KernelEngine
from astrid_runtime.grants import Grants, Limits
from astrid_runtime.logs import KernelLog
from astrid_runtime.sandbox import PluginInstance

GRANTS = Grants(publish=("md.ok", "md.err"), subscribe=("in.*",))
LIMITS = Limits(mailbox=100_000, publish_per_sec=10**9)


def _importer(engine: KernelEngine, component: Component, links: LinkImports | None,
              log: KernelLog) -> PluginInstance:
    """The caller as the kernel runs it: its own Store, the Host ABI, its shims if any."""
    bus = Bus()
    bell = Doorbell(trio.lowlevel.current_trio_token(), threading.get_ident())
    ctx = PluginContext("mdcaller", GRANTS, LIMITS, bus.attach("mdcaller", GRANTS, LIMITS, bell),
                        None, log.plugin_line, log.host_bug)
    ctx.links = links
    inst = PluginInstance("mdcaller", engine, component, PluginLinker(engine.engine, ctx),
                          LIMITS)
    inst.init("in.*")
    return inst


def _per_call(inst: PluginInstance, calls: int, repeat: int) -> float:
    few = cpu_timed(lambda: inst.on_message("in.bench", b"x" * 100), repeat)
    many = cpu_timed(lambda: inst.on_message("in.bench", b"x" * calls), repeat)
    return (many - few) / (calls - 100)


def bench_links(engine: KernelEngine, quick: bool) -> list[str]:
    """Rows of the links table: shim, composed, host-called baseline."""
    markdown_path = MARKDOWN_DIR / "markdown.wasm"
    markdown = engine.compile(markdown_path.read_bytes()).component
    caller = engine.compile(build_caller().read_bytes()).component
    composed = engine.compile(compose(build_caller(), markdown_path).read_bytes()).component
    log = KernelLog()
    provider = LinkProvider("markdown", "0.1.0", engine, markdown, "",
                            Limits(memory_bytes=4 * 1024 * 1024),
                            {RENDER.split("@")[0]: RENDER}, log)
    shim = Shim("mdcaller", RENDER, RENDER.split("@")[0], ("to-html",), provider)
    links = LinkImports([shim], lambda fn, e: log.host_bug("mdcaller", fn, e),
                        answer_cap=LIMITS.memory_bytes // 2)  # as the kernel wires it
    calls, repeat = (2000, 7) if quick else (20000, 15)
    linked = _per_call(_importer(engine, caller, links, log), calls, repeat)
    assert provider.crashes == 0 and provider.calls > calls
    fused = _per_call(_importer(engine, composed, None, log), calls, repeat)

    store = Store(engine.engine)
    store.set_epoch_deadline(10**9)
    exported = Linker(engine.engine).instantiate(store, markdown)
    to_html = exported.get_func(store, exported.get_export_index(
        store, "to-html", exported.get_export_index(store, RENDER)))
    direct = GuestFunc(to_html, Signature((STRING,), ResultCodec(STRING, STRING)))
    store.set_fuel(2**62)

    def exports() -> None:
        for _ in range(calls):
            direct(store, "*hi*")

    export = cpu_timed(exports, repeat) / calls
    return [f"| cross-component call `to-html(\"*hi*\")` (WAT -> C, own Stores, host shim) | "
            f"{us(linked)} |",
            f"| the same two components fused by `wasm-tools compose` (one Store) | "
            f"{us(fused)} |",
            f"| baseline (same run): that export called from the host | {us(export)} |"]
