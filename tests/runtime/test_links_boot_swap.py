"""Links at boot and under load, with real components (see test_links.py for the parts).

- A cycle of imports among real plugins is refused at boot, one line per plugin,
  and so is a plugin that imports from one of them; the kernel boots the rest.
- A callee runs on its own pinned fuel, not its caller's.
- A callee cannot crash its caller with an answer too big for the caller's memory.
- Hot swap under load: a host thread calling the provider without pause and the
  importer working through its mailbox while the operator's new pin is swapped
  in. Every call is counted and answered exactly once, by the old version
  until the swap and by the new one after it, never by the old again.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import pytest
import trio
from linkkit import (
    CALLER_MANIFEST,
    MARKDOWN_DIR,
    RENDER,
    PluginDir,
    build_caller,
    build_hostile,
    build_mdwrap,
    provider_manifest,
    write_tree,
)
from testkit import ExpectedLogs
from wasmtime import _ffi as ffi

from astrid_runtime.abi.canon import (
    BYTES,
    STRING,
    U32,
    Codec,
    Err,
    ListCodec,
    Ok,
    OptionCodec,
    ResultCodec,
    TupleCodec,
    Val,
    val_delete,
)
from astrid_runtime.abi.link_answer import answer_bytes
from astrid_runtime.abi.links import LinkProvider
from astrid_runtime.bus import Tap
from astrid_runtime.grants import Grants, Limits
from astrid_runtime.kernel import BootPlan, Kernel
from astrid_runtime.lockfile import entry_for, load_lockfile
from astrid_runtime.manifest import load_manifest
from astrid_runtime.supervisor import State

WRAP = "astrid:mdwrap/wrap@0.1.0"
CALLER_GRANTS = Grants(subscribe=("in.*",), publish=("md.ok", "md.err"), link=(RENDER,))


async def boot(kernel: Kernel, root: Path, plugins: list[PluginDir]) -> None:
    await kernel.boot(BootPlan(write_tree(root, plugins)))
    for sup in kernel.supervisors.values():
        await sup.wait_for(lambda s: s.state is not State.STARTING)


async def test_a_link_cycle_is_refused_at_boot_in_one_line_each(
        kernel: Kernel, tmp_path: Path, expect_logs: ExpectedLogs) -> None:
    """`wrap` imports render from `hostile`, whose manifest imports wrap back: both are
    refused, and so is the caller of render; nothing of them runs."""
    expect_logs.allow("plugin.refused")
    plugins = [
        PluginDir("wrap", build_mdwrap(), f'exports = ["{WRAP}"]\nimports = ["{RENDER}"]\n'),
        PluginDir("hostile", build_hostile(),
                  provider_manifest() + f'imports = ["{WRAP}"]\n'),
        PluginDir("mdcaller", build_caller(), CALLER_MANIFEST, CALLER_GRANTS),
    ]
    await boot(kernel, tmp_path, plugins)
    assert kernel.refused.keys() == {"wrap", "hostile", "mdcaller"}
    reasons = {name: refused.reason for name, refused in kernel.refused.items()}
    assert reasons == {
        "wrap": "plugin wrap is in a link cycle: hostile -> wrap -> hostile",
        "hostile": "plugin hostile is in a link cycle: hostile -> wrap -> hostile",
        "mdcaller": f"plugin mdcaller imports {RENDER} from plugin hostile, which was refused",
    }
    assert kernel.supervisors == {} and kernel.links.providers == {}
    assert kernel.status()["links"] == []


async def test_the_callee_runs_on_its_own_fuel(
        kernel: Kernel, tmp_path: Path, expect_logs: ExpectedLogs) -> None:
    """The provider's pin allows 1 M fuel per call and 5 s: its loop runs out of
    its own fuel (not the deadline), an err for the caller, whose own budget is untouched."""
    expect_logs.allow("link.provider_crashed")
    lean = Limits(fuel_per_call=1_000_000, call_timeout_ms=5_000)
    await boot(kernel, tmp_path, [
        PluginDir("hostile", build_hostile(), provider_manifest(), None, lean),
        PluginDir("mdcaller", build_caller(), CALLER_MANIFEST, CALLER_GRANTS)])
    assert kernel.refused == {}
    tap = Tap(kernel.bus, "md.*")
    kernel.publish("in.md", b"loop")
    kernel.publish("in.md", b"after")
    crashed, after = await tap.receive(), await tap.receive()
    assert crashed.topic == "md.err"
    assert crashed.payload.startswith(b"link astrid:markdown/render.to-html: provider hostile "
                                      b"crashed (")
    assert b"fuel" in crashed.payload
    assert (after.topic, after.payload) == ("md.ok", b"<p>after</p>")
    hostile = kernel.links.providers["hostile"]
    assert (hostile.crashes, hostile.restarts) == (1, 1)
    assert kernel.supervisors["mdcaller"].state is State.RUNNING
    assert kernel.supervisors["mdcaller"].crashes == 0


async def test_an_answer_too_big_for_the_caller_is_an_err_not_a_crash(
        kernel: Kernel, tmp_path: Path) -> None:
    """The C renderer may use 16 MiB; the caller 1 MiB (its cap: 512 KiB). An answer the
    caller could not hold is refused before wasmtime copies it into the caller."""
    await boot(kernel, tmp_path, [
        PluginDir("markdown", MARKDOWN_DIR / "markdown.wasm", provider_manifest(), None,
                  Limits(memory_bytes=16 * 1024 * 1024)),
        PluginDir("mdcaller", build_caller(), CALLER_MANIFEST, CALLER_GRANTS,
                  Limits(memory_bytes=1024 * 1024))])
    assert kernel.refused == {}
    tap = Tap(kernel.bus, "md.*")
    for text in (b"a" * 300_000, b"b" * 600_000, b"small"):
        kernel.publish("in.md", text)
    with trio.fail_after(60):  # a crashed caller never answers: fail, do not hang
        fits, over, small = [await tap.receive() for _ in range(3)]
    assert (fits.topic, fits.payload) == ("md.ok", b"<p>" + b"a" * 300_000 + b"</p>\n")
    assert (over.topic, over.payload) == (
        "md.err", b"link astrid:markdown/render.to-html: the answer of 600009 bytes is over "
                  b"plugin mdcaller's cap of 524288 (half its memory limit)")
    assert (small.topic, small.payload) == ("md.ok", b"<p>small</p>\n")
    importer = kernel.supervisors["mdcaller"]
    assert importer.crashes == 0 and importer.state is State.RUNNING
    assert kernel.links.providers["markdown"].crashes == 0


@pytest.mark.parametrize(("codec", "value", "size"), [
    (STRING, "héllo", 6),  # UTF-8 bytes
    (ResultCodec(STRING, STRING), Ok("abc"), 4),
    (ResultCodec(None, STRING), Ok(None), 1),
    (ListCodec(STRING), ["ab", "cde", ""], 5),
    (BYTES, b"x" * 1000, 1000),  # a list of scalars: a byte each, not walked
    (OptionCodec(TupleCodec(STRING, U32)), ("ab", 7), 1 + 2 + 8),
])
def test_answer_bytes_counts_what_the_caller_must_allocate(
        codec: Codec, value: object, size: int) -> None:
    out = Val()
    codec.lower(value, out)
    try:
        assert answer_bytes(ctypes.addressof(out)) == size
    finally:
        val_delete(out)


def call_render(provider: LinkProvider, text: str) -> Ok[str] | Err[str]:
    """`to-html(text)` on `provider` from a host thread, as a shim calls it."""
    params = (Val * 1)()
    STRING.lower(text, params[0])
    out = Val()
    try:
        why = provider.call("astrid:markdown/render", "to-html", ctypes.addressof(params), 1,
                            ctypes.addressof(out))
    finally:
        ffi.wasmtime_component_val_delete(ctypes.byref(params[0]))
    if why is not None:
        return Err(why)
    result: Ok[str] | Err[str] = ResultCodec(STRING, STRING).lift(out)
    return result


def served_by_new(payload: str, text: str) -> bool:
    """Which version answered `text` (the new pin's config prefixes `v2:`)."""
    assert payload in (f"<p>{text}</p>", f"v2:<p>{text}</p>"), (payload, text)
    return payload.startswith("v2:")


def never_back(versions: list[bool]) -> bool:
    """Old answers, then new ones, never old after new."""
    return versions == sorted(versions)


async def test_hot_swap_under_load_answers_every_call_once(
        kernel: Kernel, tmp_path: Path) -> None:
    provider = PluginDir("hostile", build_hostile(), provider_manifest())
    await boot(kernel, tmp_path, [provider, PluginDir("mdcaller", build_caller(),
                                                      CALLER_MANIFEST, CALLER_GRANTS)])
    hostile = kernel.links.providers["hostile"]
    # The operator pins 0.2.0 of the same provider, configured to answer "v2:...".
    (tmp_path / "hostile" / "plugin.toml").write_text(
        f'name = "hostile"\nversion = "0.2.0"\ncomponent = "{provider.component}"\n'
        + provider_manifest(config="v2:"))
    lock = load_lockfile(tmp_path / "plugins.lock")
    lock = lock.with_entry(entry_for(load_manifest(tmp_path / "hostile"),
                                     provider.component.read_bytes()))
    lock.save()

    started, swapped = threading.Event(), threading.Event()
    #: (started after the swap returned, text, answer) of each host call
    host_calls: list[tuple[bool, str, Ok[str] | Err[str]]] = []

    def hammer() -> None:
        after = 0
        while after < 50:
            late = swapped.is_set()
            after += late
            text = f"h{len(host_calls)}"
            host_calls.append((late, text, call_render(hostile, text)))
            started.set()

    tap = Tap(kernel.bus, "md.*")
    early, before, total = 10, 100, 150
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, hammer)
        assert await trio.to_thread.run_sync(started.wait, 60)
        for i in range(before):
            kernel.publish("in.md", f"m{i}".encode())
        # The importer is at work on the old version (the rest of its mail is queued) ...
        answers = [await tap.receive() for _ in range(early)]
        await trio.to_thread.run_sync(kernel.links.swap_pinned, lock, "hostile")
        swapped.set()
        for i in range(before, total):
            kernel.publish("in.md", f"m{i}".encode())
        answers += [await tap.receive() for _ in range(total - early)]

    # The importer: every message answered once, in order, ok; after the swap, by 0.2.0.
    assert [m.topic for m in answers] == ["md.ok"] * total
    bus_versions = [served_by_new(m.payload.decode(), f"m{i}") for i, m in enumerate(answers)]
    assert never_back(bus_versions) and all(bus_versions[before:])
    assert not any(bus_versions[:early])
    # The host thread: every call answered ok, old before the swap, new after it.
    assert all(isinstance(answer, Ok) for _, _, answer in host_calls)
    host_versions = [served_by_new(str(answer.value), text) for _, text, answer in host_calls]
    assert never_back(host_versions)
    assert host_versions[0] is False  # served by 0.1.0 before the swap began
    assert all(new for (late, _, _), new in zip(host_calls, host_versions, strict=True) if late)
    assert (hostile.calls, hostile.swaps, hostile.version, hostile.crashes) == (
        total + len(host_calls), 1, "0.2.0", 0)
    assert kernel.supervisors["mdcaller"].crashes == 0
