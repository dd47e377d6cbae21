"""Plugins calling plugins: a WAT importer linked at boot to C providers.

Real parts: the committed `plugins/markdown` component (C), a hostile C
provider of the same interface (`components/links/mdhostile`), and a WAT
importer (`components/links/caller`), pinned in a `plugins.lock` and booted
by a real kernel. The importer publishes each answer of
`astrid:markdown/render.to-html` on `md.ok`, each error on `md.err`.
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import replace
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
    compose,
    provider_manifest,
    write_tree,
)
from testkit import ExpectedLogs
from wasmtime import _ffi as ffi
from wasmtime.component import Component

from astrid_runtime.abi.canon import STRING, Err, Ok, ResultCodec, Val
from astrid_runtime.abi.links import LinkProvider, check_link_types
from astrid_runtime.bus import Tap
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import KernelError
from astrid_runtime.grants import Grants, Limits
from astrid_runtime.kernel import BootPlan, Kernel
from astrid_runtime.lockfile import entry_for, load_lockfile
from astrid_runtime.manifest import load_manifest
from astrid_runtime.supervisor import State

CALLER_GRANTS = Grants(subscribe=("in.*",), publish=("md.ok", "md.err"), link=(RENDER,))
#: Tight provider limits: a loop hits the deadline quickly, a bomb the 4 MiB Store.
PROVIDER_LIMITS = Limits(call_timeout_ms=50, memory_bytes=4 * 1024 * 1024,
                         fuel_per_call=10**10)


@pytest.fixture(scope="session")
def link_wasm() -> dict[str, Path]:
    return {"caller": build_caller(), "hostile": build_hostile(),
            "markdown": MARKDOWN_DIR / "markdown.wasm"}


def caller(link_wasm: dict[str, Path], *, manifest: str = CALLER_MANIFEST,
           grants: Grants | None = CALLER_GRANTS) -> PluginDir:
    return PluginDir("mdcaller", link_wasm["caller"], manifest, grants)


def provider(link_wasm: dict[str, Path], kind: str = "hostile", *,
             export: str = RENDER) -> PluginDir:
    return PluginDir(kind, link_wasm[kind], provider_manifest(export), None, PROVIDER_LIMITS)


async def boot(kernel: Kernel, root: Path, plugins: list[PluginDir]) -> None:
    await kernel.boot(BootPlan(write_tree(root, plugins)))
    for sup in kernel.supervisors.values():
        await sup.wait_for(lambda s: s.state is not State.STARTING)


async def ask(kernel: Kernel, text: bytes, topic: str = "in.md") -> tuple[str, bytes]:
    """Publish `text` to the importer; (topic, payload) of its answer."""
    tap = Tap(kernel.bus, "md.*")
    kernel.publish(topic, text)
    message = await tap.receive()
    return message.topic, message.payload


def the_provider(kernel: Kernel, name: str = "hostile") -> LinkProvider:
    return kernel.links.providers[name]


async def test_caller_gets_html_from_the_c_markdown_provider(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path]) -> None:
    await boot(kernel, tmp_path, [provider(link_wasm, "markdown"), caller(link_wasm)])
    assert kernel.refused == {}
    assert await ask(kernel, b"# Hi\n\nsome *text* & `code`") == (
        "md.ok", b"<h1>Hi</h1>\n<p>some <em>text</em> &amp; <code>code</code></p>\n")
    status = kernel.status()["links"]
    assert status == [{"name": "markdown", "version": "0.1.0", "state": "running",
                       "exports": [RENDER], "calls": 1, "crashes": 0, "restarts": 0,
                       "swaps": 0, "last_error": None}]


async def test_a_provider_err_is_passed_through(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path]) -> None:
    await boot(kernel, tmp_path, [provider(link_wasm), caller(link_wasm)])
    assert await ask(kernel, b"fail") == ("md.err", b"refused")
    assert the_provider(kernel).crashes == 0


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("trap", "unreachable"),
    ("loop", "deadline exceeded"),
    ("bomb", "unreachable"),  # memory.grow failed at the Store's limit; the guest trapped
])
async def test_a_crashing_provider_is_an_error_to_the_caller_and_is_restarted(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path], expect_logs: ExpectedLogs,
        behaviour: str, reason: str) -> None:
    expect_logs.allow("link.provider_crashed")
    await boot(kernel, tmp_path, [provider(link_wasm), caller(link_wasm)])
    topic, error = await ask(kernel, behaviour.encode())
    assert topic == "md.err"
    assert error.startswith(b"link astrid:markdown/render.to-html: provider hostile crashed")
    assert reason.encode() in error
    # The caller kept running; the provider was rebuilt for the next call.
    assert await ask(kernel, b"after") == ("md.ok", b"<p>after</p>")
    importer = kernel.supervisors["mdcaller"]
    assert importer.state is State.RUNNING and importer.crashes == 0
    hostile = the_provider(kernel)
    assert (hostile.crashes, hostile.restarts) == (1, 1)
    assert reason in (hostile.last_error or "")


async def test_repeated_provider_crashes_disable_it_and_the_caller_keeps_running(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("link.provider_crashed", "link.provider_disabled")
    plugins = [PluginDir("hostile", link_wasm["hostile"], provider_manifest(), None,
                         PROVIDER_LIMITS.replace(max_crashes=2)), caller(link_wasm)]
    await boot(kernel, tmp_path, plugins)
    for _ in range(2):
        assert (await ask(kernel, b"trap"))[0] == "md.err"
    topic, error = await ask(kernel, b"fine")
    assert topic == "md.err" and b"provider hostile is disabled (2 crashes within" in error
    assert kernel.supervisors["mdcaller"].state is State.RUNNING
    assert kernel.status()["links"][0]["state"] == "disabled"


async def test_a_call_outside_the_grant_is_refused(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.asks_more_than_granted")
    ungranted = Grants(subscribe=("in.*",), publish=("md.ok", "md.err"))
    await boot(kernel, tmp_path, [provider(link_wasm), caller(link_wasm, grants=ungranted)])
    topic, error = await ask(kernel, b"hello")
    assert topic == "md.err"
    assert error == (b"link astrid:markdown/render.to-html: denied: plugin mdcaller's grant "
                     b"does not name astrid:markdown/render@0.1.0")
    assert the_provider(kernel).calls == 0


async def test_a_missing_provider_is_refused_at_boot_in_one_line(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.refused")
    await boot(kernel, tmp_path, [caller(link_wasm)])
    assert kernel.refused["mdcaller"].reason == (
        "plugin mdcaller imports astrid:markdown/render@0.1.0, which no plugin exports "
        "(missing provider)")
    assert "mdcaller" not in kernel.supervisors


async def test_a_provider_of_another_version_is_refused_at_boot(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.refused")
    # It declares 0.2.0 (its component exports 0.1.0, which would refuse it too).
    await boot(kernel, tmp_path, [provider(link_wasm, export="astrid:markdown/render@0.2.0"),
                                  caller(link_wasm)])
    assert kernel.refused["mdcaller"].reason == (
        "plugin mdcaller imports astrid:markdown/render@0.1.0, but plugin hostile exports "
        "astrid:markdown/render@0.2.0 (version mismatch)")
    assert kernel.refused["hostile"].reason == (
        "plugin hostile declares export astrid:markdown/render@0.2.0, but its component "
        "does not export it")


async def test_an_undeclared_import_is_refused_at_boot(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.refused")
    undeclared = CALLER_MANIFEST.replace(f'imports = ["{RENDER}"]\n', "")
    await boot(kernel, tmp_path, [provider(link_wasm), caller(link_wasm, manifest=undeclared)])
    assert kernel.refused["mdcaller"].reason == (
        "plugin mdcaller's component imports astrid:markdown/render@0.1.0, which its "
        "plugin.toml does not declare in `imports`")


async def test_hot_swap_under_load_loses_no_call(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path]) -> None:
    """The hostile provider answers `<p>x</p>`, markdown `<p>x</p>\\n`: each answer says
    which version served it, and every message gets exactly one answer."""
    await boot(kernel, tmp_path, [provider(link_wasm), caller(link_wasm)])
    # The operator pins a new version of `hostile` (the markdown component) ...
    (tmp_path / "hostile" / "plugin.toml").write_text(
        f'name = "hostile"\nversion = "0.2.0"\ncomponent = "{link_wasm["markdown"]}"\n'
        + provider_manifest())
    manifest = load_manifest(tmp_path / "hostile")
    lock = load_lockfile(tmp_path / "plugins.lock")
    lock = lock.with_entry(entry_for(manifest, link_wasm["markdown"].read_bytes()))
    lock.save()
    tap = Tap(kernel.bus, "md.*")
    count = 150
    for i in range(count):
        kernel.publish("in.md", f"m{i}".encode())
    # ... and swaps it in while the importer works through its mailbox.
    await trio.to_thread.run_sync(kernel.links.swap_pinned, lock, "hostile")
    kernel.publish("in.md", b"last")
    answers = [await tap.receive() for _ in range(count + 1)]
    assert all(m.topic == "md.ok" for m in answers)
    for i, m in enumerate(answers[:count]):
        assert m.payload in (f"<p>m{i}</p>".encode(), f"<p>m{i}</p>\n".encode())
    assert answers[-1].payload == b"<p>last</p>\n"
    hostile = the_provider(kernel)
    assert (hostile.swaps, hostile.version, hostile.crashes, hostile.restarts) == (
        1, "0.2.0", 0, 0)
    assert kernel.supervisors["mdcaller"].crashes == 0


async def test_a_swap_to_an_unverified_or_incompatible_pin_keeps_the_old_provider(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path]) -> None:
    await boot(kernel, tmp_path, [provider(link_wasm), caller(link_wasm)])
    lock = load_lockfile(tmp_path / "plugins.lock")
    entry = lock.get("hostile")
    assert entry is not None
    tampered = lock.with_entry(replace(entry, blake3="0" * 64))
    with pytest.raises(KernelError, match=r"does not match plugins\.lock"):
        await trio.to_thread.run_sync(kernel.links.swap_pinned, tampered, "hostile")
    # A component of another world (the caller) does not export the interface.
    (tmp_path / "hostile" / "plugin.toml").write_text(
        f'name = "hostile"\nversion = "0.1.0"\ncomponent = "{link_wasm["caller"]}"\n'
        + provider_manifest())
    other = lock.with_entry(entry_for(load_manifest(tmp_path / "hostile"),
                                      link_wasm["caller"].read_bytes()))
    with pytest.raises(KernelError, match="does not export it"):
        await trio.to_thread.run_sync(kernel.links.swap_pinned, other, "hostile")
    assert await ask(kernel, b"still") == ("md.ok", b"<p>still</p>")
    assert the_provider(kernel).swaps == 0


# -- the seed's example: a Python plugin calling the C renderer -------------------

REPO = Path(__file__).resolve().parents[2]
MDVIEW = REPO / "plugins" / "mdview"


async def test_python_plugin_renders_markdown_through_the_c_provider(
        kernel: Kernel) -> None:
    """The shipped pins: plugins/mdview (componentize-py) imports what plugins/markdown
    (zig) exports, booted from the repository's own plugins.lock."""
    plugins = (REPO / "plugins" / "markdown", MDVIEW)
    await kernel.boot(BootPlan(REPO / "plugins.lock", plugins))
    mdview = kernel.supervisors["mdview"]
    await mdview.wait_for(lambda s: s.state is not State.STARTING)
    assert kernel.refused == {} and mdview.state is State.RUNNING
    tap = Tap(kernel.bus, "agent.response")
    kernel.publish("tools.markdown", json.dumps({"text": "# Hello\n\n**bold** [a](b)",
                                                  "id": 7}).encode())
    assert json.loads((await tap.receive()).payload) == {
        "text": '<h1>Hello</h1>\n<p><strong>bold</strong> <a href="b">a</a></p>\n',
        "plugin": "mdview", "in_reply_to": 7}


async def test_python_caller_gets_an_error_value_when_its_provider_traps(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("link.provider_crashed")
    manifest = (f'imports = ["{RENDER}"]\n[capabilities]\nsubscribe = ["tools.markdown"]\n'
                'publish = ["agent.response"]\n')
    await boot(kernel, tmp_path, [provider(link_wasm),
                                  PluginDir("mdview", MDVIEW / "mdview.wasm", manifest)])
    tap = Tap(kernel.bus, "agent.response")
    kernel.publish("tools.markdown", b"trap")
    reply = json.loads((await tap.receive()).payload)
    assert reply["error"] is True
    assert reply["text"].startswith("markdown: link astrid:markdown/render.to-html: provider "
                                    "hostile crashed (")
    assert "unreachable" in reply["text"]
    kernel.publish("tools.markdown", b"still here")
    assert json.loads((await tap.receive()).payload)["text"] == "<p>still here</p>"
    assert kernel.supervisors["mdview"].crashes == 0


# -- static composition: the same two components as one ---------------------------

STATIC_MANIFEST = CALLER_MANIFEST.replace(f'imports = ["{RENDER}"]\n', "")


async def test_static_composition_runs_as_one_plugin_and_shares_the_providers_fate(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    """`wasm-tools compose` builds one component that imports only the Host ABI: no link,
    no shim, but a trap in the renderer is a crash of the whole plugin."""
    expect_logs.allow("plugin.crashed")
    composed = compose(link_wasm["caller"], link_wasm["hostile"])
    plugins = [PluginDir("mdstatic", composed, STATIC_MANIFEST,
                         Grants(subscribe=("in.*",), publish=("md.ok", "md.err")))]
    await boot(kernel, tmp_path, plugins)
    assert kernel.refused == {} and kernel.status()["links"] == []
    assert await ask(kernel, b"one") == ("md.ok", b"<p>one</p>")
    sup = kernel.supervisors["mdstatic"]
    kernel.publish("in.md", b"trap")
    await sup.wait_for(lambda s: s.crashes == 1 and s.state is State.RUNNING)
    assert "unreachable" in (sup.last_error or "")
    assert await ask(kernel, b"two") == ("md.ok", b"<p>two</p>")


async def test_two_importers_share_one_provider_one_call_at_a_time(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path]) -> None:
    """Two importers in two guest threads: the provider's Store is entered by one
    call at a time (its lock) and every call is answered."""
    second = PluginDir("mdcaller2", link_wasm["caller"], CALLER_MANIFEST.replace("in.*", "in2.*"),
                       Grants(subscribe=("in2.*",), publish=("md.ok", "md.err"), link=(RENDER,)))
    await boot(kernel, tmp_path, [provider(link_wasm, "markdown"), caller(link_wasm), second])
    tap = Tap(kernel.bus, "md.*")
    count = 100
    for i in range(count):
        kernel.publish("in.md", f"a{i}".encode())
        kernel.publish("in2.md", f"b{i}".encode())
    answers = sorted([(await tap.receive()).payload for _ in range(2 * count)])
    assert answers == sorted(f"<p>{p}{i}</p>\n".encode() for p in "ab" for i in range(count))
    assert the_provider(kernel, "markdown").calls == 2 * count


async def test_the_swap_control_op_reads_the_kernels_lockfile(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path]) -> None:
    """`astrid plugin swap NAME` after `astrid plugin install`: the running kernel swaps to
    what its lockfile pins now, and says why not when it cannot."""
    await boot(kernel, tmp_path, [provider(link_wasm), caller(link_wasm)])
    swap = kernel.control_ops["links.swap"]
    assert await swap({"plugin": "mdcaller"}) == {
        "ok": False, "kind": "invalid", "error": "plugin mdcaller is not a running link provider"}
    (tmp_path / "hostile" / "plugin.toml").write_text(
        f'name = "hostile"\nversion = "0.3.0"\ncomponent = "{link_wasm["markdown"]}"\n'
        + provider_manifest())
    lock = load_lockfile(tmp_path / "plugins.lock")
    lock.with_entry(entry_for(load_manifest(tmp_path / "hostile"),
                              link_wasm["markdown"].read_bytes())).save()
    assert await swap({"plugin": "hostile"}) == {"ok": True, "plugin": "hostile",
                                                 "version": "0.3.0"}
    assert await ask(kernel, b"*now*") == ("md.ok", b"<p><em>now</em></p>\n")


async def call_wrap(provider: LinkProvider, text: str) -> Ok[str] | Err[str]:
    """`astrid:mdwrap/wrap.wrap(text)` on `provider`, from the host (in a worker thread)."""
    params = (Val * 1)()
    STRING.lower(text, params[0])
    out = Val()
    try:
        why = await trio.to_thread.run_sync(provider.call, "astrid:mdwrap/wrap", "wrap",
                                            ctypes.addressof(params), 1, ctypes.addressof(out))
    finally:
        ffi.wasmtime_component_val_delete(ctypes.byref(params[0]))
    assert why is None
    result: Ok[str] | Err[str] = ResultCodec(STRING, STRING).lift(out)
    return result


@pytest.mark.parametrize("inner", ["markdown", "hostile"])
async def test_a_provider_that_imports_another_is_linked_after_it(
        kernel: Kernel, tmp_path: Path, link_wasm: dict[str, Path], expect_logs: ExpectedLogs,
        inner: str) -> None:
    """`aaa-wrap` comes first in the lock but imports what `inner` exports: it is wired
    after it, and an error deep in the chain reaches the top as a value."""
    expect_logs.allow("link.provider_crashed")
    wrap = PluginDir("aaa-wrap", build_mdwrap(),
                     f'exports = ["astrid:mdwrap/wrap@0.1.0"]\nimports = ["{RENDER}"]\n')
    await boot(kernel, tmp_path, [wrap, provider(link_wasm, inner)])
    assert kernel.refused == {}
    wrapper = the_provider(kernel, "aaa-wrap")
    if inner == "markdown":
        assert await call_wrap(wrapper, "*x*") == Ok("<p><em>x</em></p>\n")
    else:
        result = await call_wrap(wrapper, "trap")
        assert isinstance(result, Err)
        assert result.value.startswith("link astrid:markdown/render.to-html: provider hostile "
                                       "crashed")
        assert await call_wrap(wrapper, "ok") == Ok("<p>ok</p>")
        assert (the_provider(kernel).crashes, wrapper.crashes) == (1, 0)


def test_interfaces_with_resources_cannot_be_linked(
        engine: KernelEngine, components: dict[str, Component]) -> None:
    """A handle belongs to one Store: `astrid:kernel/vfs` (resources `dir`, `file`) is
    refused as a link interface; `bus` (plain values) passes the check."""
    imports = {name: {fn: ext.ty for fn, ext in item.ty.exports(engine.engine).items()}
               for name, item in components["pyecho"].type.imports(engine.engine).items()
               if name.startswith("astrid:kernel/")}
    vfs = imports["astrid:kernel/vfs@0.1.0"]
    assert check_link_types("vfs", {"root": vfs["root"]}, vfs) == (
        "vfs.root passes a resource, stream or future, which cannot cross between two "
        "plugins' Stores")
    bus = imports["astrid:kernel/bus@0.1.0"]
    # Plain values, but the error is a variant, not a string: still not linkable.
    assert check_link_types("bus", {"publish": bus["publish"]}, bus) == (
        "bus.publish must return result<_, string> (a failed link call is answered as err)")
