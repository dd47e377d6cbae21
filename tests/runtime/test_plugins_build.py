"""The shipped plugins build from source into components of the `plugin` world.

Builds once per session into a temporary directory (the tree's committed
components are left alone): every plugin in a compiled language, and one
Python plugin — the Python toolchain is the same for all of them, and each
committed component is proven built from today's sources and toolchain by
its `.inputs` record (test_committed_component_was_built_from_the_current_
sources), so rebuilding six 18 MB Python components would prove nothing
more. componentize-py output is not byte-for-byte reproducible, so Python
components are checked for shape; the C plugin is checked byte for byte
against the committed, pinned component.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import json
import subprocess
import sys
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from astrid_runtime.bus import Tap
from astrid_runtime.bus.topics import match_tokens, validate_pattern, validate_topic
from astrid_runtime.engine import KernelEngine, digest
from astrid_runtime.errors import KernelError
from astrid_runtime.kernel import BootPlan, open_kernel
from astrid_runtime.lockfile import entry_for, load_lockfile, read_verified
from astrid_runtime.manifest import load_manifest
from astrid_runtime.scaffold import ScaffoldError, scaffold_plugin
from astrid_runtime.scaffold.build import (
    BuildError,
    BuildResult,
    Language,
    build_inputs,
    build_plugin,
    detect_language,
    shipped_plugins,
)
from astrid_runtime.supervisor import State

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {p.name: p for p in shipped_plugins(ROOT)}
#: Rebuilt from source each run (see the module docstring).
FRESH = [*sorted(name for name, path in SHIPPED.items()
                 if detect_language(path) is not Language.PYTHON), "router"]
WASM_TOOLS = Path(sys.executable).parent / "wasm-tools"

INIT = "export init: func(config: string) -> result<_, string>;"
ON_MESSAGE = "export on-message: func(topic: string, payload: list<u8>) -> result<_, string>;"


#: The tests that use `fresh_builds` run on one pytest-xdist worker: the builds are
#: minutes of CPU, and each worker would otherwise make its own.
FRESH_GROUP = pytest.mark.xdist_group("fresh-plugin-builds")


@pytest.fixture(scope="session")
def fresh_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuildResult]:
    out = tmp_path_factory.mktemp("plugin-builds")

    def build(name: str) -> BuildResult:
        return build_plugin(SHIPPED[name], out=out / f"{name}.wasm",
                            work_dir=out / f"{name}.work", force=True)

    # The builds are separate processes; two at a time suit the 2-core machines.
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(FRESH, pool.map(build, FRESH), strict=True))


def component_wit(path: Path) -> str:
    proc = subprocess.run([str(WASM_TOOLS), "component", "wit", str(path)],
                          capture_output=True, text=True, check=True)
    return proc.stdout


def test_the_three_shipped_plugins_are_there() -> None:
    assert {"router", "notes", "wordcount"} <= set(SHIPPED)


@FRESH_GROUP
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_component_is_a_plugin_world_component(
        name: str, fresh_builds: dict[str, BuildResult]) -> None:
    manifest = load_manifest(SHIPPED[name])
    result = fresh_builds.get(name)
    if result is not None:
        assert result.rebuilt and result.size > 0
    wit = component_wit(manifest.component if result is None else result.component)
    if manifest.exports and ON_MESSAGE not in wit:  # a link provider (plugins/markdown)
        assert all(f"export {ref};" in wit for ref in manifest.exports)
        return
    if "export check:" in wit and ON_MESSAGE not in wit:
        # An interceptor (astrid:kernel/interceptor): checked in test_interceptors.
        return
    assert INIT in wit and ON_MESSAGE in wit
    imports = {line.strip().removeprefix("import ").rstrip(";")
               for line in wit.splitlines() if line.strip().startswith("import ")}
    assert "astrid:kernel/bus@0.1.0" in imports
    foreign = {i for i in imports if not i.startswith(("astrid:kernel/", "wasi:"))}
    assert foreign == {str(ref) for ref in manifest.imports}  # only declared links
    if detect_language(SHIPPED[name]) is Language.C:
        # No libc, no WASI: the C plugin imports only the Host ABI.
        assert all(i.startswith("astrid:kernel/") for i in imports)


@FRESH_GROUP
def test_c_plugin_build_is_reproducible_and_matches_the_pin(
        fresh_builds: dict[str, BuildResult]) -> None:
    fresh = fresh_builds["wordcount"].component.read_bytes()
    shipped = load_manifest(SHIPPED["wordcount"]).component.read_bytes()
    assert fresh == shipped
    entry = load_lockfile(ROOT / "plugins.lock").get("wordcount")
    assert entry is not None and entry.blake3 == digest(fresh)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_committed_component_was_built_from_the_current_sources(name: str) -> None:
    manifest = load_manifest(SHIPPED[name])
    recorded = manifest.component.with_suffix(".inputs").read_text(encoding="utf-8")
    assert recorded == build_inputs(SHIPPED[name]), (
        f"{name}: sources changed since its component was built; "
        "run scripts/build-plugins.sh and commit the component and plugins.lock")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_committed_component_verifies_against_plugins_lock(name: str) -> None:
    manifest = load_manifest(SHIPPED[name])
    entry = load_lockfile(ROOT / "plugins.lock", missing_ok=False).get(name)
    assert entry is not None, f"{name} is not pinned in plugins.lock"
    assert read_verified(entry, manifest.component)
    assert entry.version == manifest.version
    assert entry.grants == manifest.asks
    assert entry.component == manifest.component


@FRESH_GROUP
def test_unchanged_inputs_are_not_rebuilt(fresh_builds: dict[str, BuildResult]) -> None:
    first = fresh_builds["wordcount"]
    again = build_plugin(SHIPPED["wordcount"], out=first.component,
                         work_dir=first.component.parent / "again.work")
    assert not again.rebuilt and again.component == first.component


def test_directory_without_sources_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "plugin.toml").write_text('name = "empty"\nversion = "1"\n'
                                          'component = "empty.wasm"\n')
    with pytest.raises(BuildError) as e:
        build_plugin(tmp_path)
    assert "no app.py (Python), app.js (JavaScript) or *.c (C) source" in str(e.value)
    assert "\n" not in str(e.value)


def test_python_that_fails_at_import_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "plugin.toml").write_text('name = "broken"\nversion = "1"\n'
                                          'component = "broken.wasm"\n')
    (tmp_path / "app.py").write_text("import astrid_sdk\nraise RuntimeError('boom at import')\n")
    with pytest.raises(BuildError) as e:
        build_plugin(tmp_path)
    message = str(e.value)
    assert message == "componentize-py (broken) failed: RuntimeError: boom at import"
    assert not (tmp_path / "broken.wasm").exists()


def test_missing_manifest_is_a_kernel_error(tmp_path: Path) -> None:
    with pytest.raises(KernelError):
        build_plugin(tmp_path)


# -- `astrid plugin new` ------------------------------------------------------


def test_scaffold_refuses_bad_names_and_existing_dirs(tmp_path: Path) -> None:
    for bad in ("Hello", "1st", "", "a_b", "x" * 64, "../up"):
        with pytest.raises(ScaffoldError) as e:
            scaffold_plugin(bad, tmp_path)
        assert "\n" not in str(e.value)
    scaffold_plugin("taken", tmp_path)
    with pytest.raises(ScaffoldError, match="already exists"):
        scaffold_plugin("taken", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


async def test_scaffolded_plugin_builds_installs_and_answers(tmp_path: Path) -> None:
    plugin_dir = scaffold_plugin("hello-bot", tmp_path / "plugins")
    assert sorted(p.name for p in plugin_dir.iterdir()) == [".gitignore", "app.py",
                                                           "plugin.toml"]
    built = build_plugin(plugin_dir)
    assert built.component == plugin_dir / "hello-bot.wasm"
    assert INIT in component_wit(built.component)
    lock = tmp_path / "plugins.lock"
    manifest = load_manifest(plugin_dir)
    load_lockfile(lock).with_entry(entry_for(manifest, built.component.read_bytes())).save()

    engine = KernelEngine()
    async with open_kernel(engine, MemoryKv()) as kernel:
        with trio.fail_after(120):
            await kernel.boot(BootPlan(lock, (plugin_dir,)))
            sup = kernel.supervisors["hello-bot"]
            await sup.wait_for(lambda s: s.state in (State.RUNNING, State.DISABLED))
            assert sup.state is State.RUNNING, sup.last_error
            tap = Tap(kernel.bus, "agent.response")
            kernel.publish("hello-bot.ping", b"hi")
            assert json.loads((await tap.receive()).payload) == {
                "text": "pong", "plugin": "hello-bot", "echo": "hi"}
            for expected in (1, 2):
                kernel.publish("hello-bot.count", b"")
                assert json.loads((await tap.receive()).payload)["calls"] == expected
        await kernel.stop()


class MemoryKv:
    """A dict with the kernel's KV interface (the shipped-plugin tests use SurrealDB)."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], bytes] = {}

    def get(self, plugin: str, key: str) -> bytes | None:
        return self._data.get((plugin, key))

    def set(self, plugin: str, key: str, value: bytes) -> None:
        self._data[(plugin, key)] = bytes(value)

    def delete(self, plugin: str, key: str) -> bool:
        return self._data.pop((plugin, key), None) is not None

    def list(self, plugin: str, prefix: str, limit: int = 1000) -> list[str]:
        return sorted(k for p, k in self._data if p == plugin and k.startswith(prefix))[:limit]


# -- the SDK on the host ---------------------------------------------------------
# The SDK runs inside the component; here it runs against stand-ins for the
# generated bindings, to check its own rules quickly and precisely.


class FakeErr(Exception):
    def __init__(self, value: object) -> None:
        super().__init__(value)
        self.value = value


class Error_Denied:  # spelled as componentize-py spells a WIT variant case
    def __init__(self, value: str) -> None:
        self.value = value


class FakeHost:
    """`wit_world.imports.{bus,kv,log}` as plain functions recording what they get."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.subscribed: list[str] = []
        self.logged: list[tuple[str, str, list[tuple[str, str]]]] = []
        self.kv: dict[str, bytes] = {}
        self.deny: set[str] = set()
        #: What `bus.current-sender` returns: (plugin, kernel) or None.
        self.sender: tuple[str, str | None] | None = ("client", None)

    def modules(self) -> dict[str, types.ModuleType]:
        cpt = types.ModuleType("componentize_py_types")
        cpt.Err = FakeErr  # type: ignore[attr-defined]
        world = types.ModuleType("wit_world")
        world.WitWorld = type("WitWorld", (), {})  # type: ignore[attr-defined]
        imports = types.ModuleType("wit_world.imports")
        bus = types.ModuleType("wit_world.imports.bus")
        kv = types.ModuleType("wit_world.imports.kv")
        log = types.ModuleType("wit_world.imports.log")

        def publish(topic: str, payload: bytes) -> None:
            if topic in self.deny:
                raise FakeErr(Error_Denied(f"publish to {topic!r} not granted"))
            self.published.append((topic, payload))

        def subscribe(pattern: str) -> int:
            self.subscribed.append(pattern)
            return len(self.subscribed)

        bus.publish, bus.subscribe = publish, subscribe  # type: ignore[attr-defined]
        bus.unsubscribe = lambda sub_id: None  # type: ignore[attr-defined]
        bus.current_sender = lambda: (  # type: ignore[attr-defined]
            None if self.sender is None
            else types.SimpleNamespace(plugin=self.sender[0], kernel=self.sender[1]))
        kv.get = self.kv.get  # type: ignore[attr-defined]
        kv.set = self.kv.__setitem__  # type: ignore[attr-defined]
        kv.delete = lambda key: self.kv.pop(key, None) is not None  # type: ignore[attr-defined]
        kv.list = lambda prefix: sorted(k for k in self.kv if k.startswith(prefix))  # type: ignore[attr-defined]
        log.Level = enum.Enum("Level", "TRACE DEBUG INFO WARN ERROR")  # type: ignore[attr-defined]
        log.write = lambda level, msg, fields: self.logged.append(  # type: ignore[attr-defined]
            (level.name, msg, fields))
        imports.bus, imports.kv, imports.log = bus, kv, log  # type: ignore[attr-defined]
        world.imports = imports  # type: ignore[attr-defined]
        return {"componentize_py_types": cpt, "wit_world": world, "wit_world.imports": imports,
                "wit_world.imports.bus": bus, "wit_world.imports.kv": kv,
                "wit_world.imports.log": log}


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, FakeHost]]:
    """`astrid_sdk` imported against a `FakeHost`; every trace removed afterwards."""
    host = FakeHost()
    for name, module in host.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(ROOT / "astrid_runtime" / "sdk"))
    yield importlib.import_module("astrid_sdk"), host
    for name in [m for m in sys.modules if m == "astrid_sdk" or m.startswith("astrid_sdk.")]:
        del sys.modules[name]


def test_sdk_dispatches_by_pattern_and_turns_failures_into_err(
        sdk: tuple[Any, FakeHost]) -> None:
    astrid_sdk, host = sdk
    plugin = astrid_sdk.Plugin("demo")
    seen: list[str] = []

    @plugin.on("demo.echo")
    def echo(msg: Any) -> None:
        plugin.respond(msg.text, topic=msg.topic)

    @plugin.on("demo.>")
    def rest(msg: Any) -> None:
        if msg.topic == "demo.fail":
            raise ValueError("no good")
        astrid_sdk.kv.set("last", {"topic": msg.topic})
        seen.append(msg.topic)

    world = plugin.world()()
    world.init('{"x": 1}')
    assert host.subscribed == ["demo.echo", "demo.>"]
    assert plugin.config_json() == {"x": 1}
    world.on_message("demo.echo", b'{"text": "hi"}')
    assert host.published == [("agent.response",
                               b'{"text":"hi","plugin":"demo","topic":"demo.echo"}')]
    world.on_message("demo.a.b", b"")
    assert seen == ["demo.a.b"] and astrid_sdk.kv.get_json("last") == {"topic": "demo.a.b"}
    with pytest.raises(FakeErr) as e:
        world.on_message("demo.fail", b"")
    assert e.value.value == "demo: demo.fail: ValueError: no good"
    assert host.logged[-1][:2] == ("ERROR", "handler failed")
    world.on_message("other.topic", b"")  # no handler: ignored, logged at debug


def test_sdk_messages_carry_the_kernel_stamped_sender(sdk: tuple[Any, FakeHost]) -> None:
    astrid_sdk, host = sdk
    plugin = astrid_sdk.Plugin("demo")
    seen: list[Any] = []
    plugin.on("demo.>")(seen.append)
    world = plugin.world()()
    world.init("")
    world.on_message("demo.a", b"")
    host.sender = ("notes", "ab" * 32)
    world.on_message("demo.b", b"")
    assert [m.sender for m in seen] == [astrid_sdk.Sender("client"),
                                        astrid_sdk.Sender("notes", "ab" * 32)]
    assert seen[0].sent_by("router", "client") and not seen[1].sent_by("client")
    assert seen[0].sender.local and not seen[1].sender.local


def test_sdk_refused_host_call_is_a_host_error(sdk: tuple[Any, FakeHost]) -> None:
    astrid_sdk, host = sdk
    host.deny.add("secret.topic")
    with pytest.raises(astrid_sdk.HostError) as e:
        astrid_sdk.publish("secret.topic", "x")
    assert (e.value.kind, e.value.reason) == ("denied", "publish to 'secret.topic' not granted")
    plugin = astrid_sdk.Plugin("demo")

    @plugin.on_init
    def boom(config: str) -> None:
        astrid_sdk.publish("secret.topic", config)

    with pytest.raises(FakeErr) as init_err:
        plugin.world()().init("cfg")
    assert init_err.value.value == ("demo: init failed: HostError: denied: "
                                    "publish to 'secret.topic' not granted")


def test_sdk_codec_and_kv_helpers(sdk: tuple[Any, FakeHost]) -> None:
    astrid_sdk, host = sdk
    kv = astrid_sdk.kv
    kv.set("b", b"\x00\xff")
    kv.set("t", "ünïcode")
    kv.set("j", [1, {"a": None}])
    assert host.kv == {"b": b"\x00\xff", "t": "ünïcode".encode(), "j": b'[1,{"a":null}]'}
    assert kv.get("b") == b"\x00\xff" and kv.get_text("t") == "ünïcode"
    assert kv.get_json("j") == [1, {"a": None}] and kv.get_json("missing", 7) == 7
    assert kv.keys() == ["b", "j", "t"] and kv.delete("b") and not kv.delete("b")
    message = astrid_sdk.Message("t", b"\xffnot utf-8")
    assert message.text == "\ufffdnot utf-8"
    assert astrid_sdk.Message("t", b'{"text": 5}').text == '{"text": 5}'


TOKENS = st.sampled_from(["a", "b", "c"])


@given(pattern=st.lists(st.one_of(TOKENS, st.just("*")), min_size=1, max_size=4),
       tail=st.booleans(), topic=st.lists(TOKENS, min_size=1, max_size=5))
def test_sdk_topic_matcher_agrees_with_the_kernel(pattern: list[str], tail: bool,
                                                  topic: list[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "astrid_sdk_topics", ROOT / "astrid_runtime/sdk/astrid_sdk/topics.py")
    assert spec is not None and spec.loader is not None
    sdk_topics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sdk_topics)
    p = ".".join([*pattern, ">"] if tail else pattern)
    t = ".".join(topic)
    assert sdk_topics.matches(p, t) == match_tokens(validate_pattern(p), validate_topic(t))
