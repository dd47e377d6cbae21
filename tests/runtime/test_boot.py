"""Boot from plugins.lock: verify before compile, refuse bad plugins one line
each while the rest boots, compile cache on warm start."""

from __future__ import annotations

from pathlib import Path

from testkit import ExpectedLogs, MemoryKv, write_plugin

from astrid_runtime.bus import Tap
from astrid_runtime.engine import KernelEngine
from astrid_runtime.kernel import BootPlan, open_kernel
from astrid_runtime.lockfile import entry_for, load_lockfile
from astrid_runtime.manifest import load_manifest
from astrid_runtime.supervisor import State


def install(lock_path: Path, plugin_dir: Path) -> None:
    manifest = load_manifest(plugin_dir)
    lock = load_lockfile(lock_path)
    lock.with_entry(entry_for(manifest, manifest.component.read_bytes())).save()


async def test_boot_runs_pinned_plugins_and_refuses_the_rest(
        tmp_path: Path, engine: KernelEngine, component_paths: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.refused")
    relay = write_plugin(tmp_path, "relay", component_paths["relay"], config="demo",
                         publish=("demo.>",), subscribe=("demo",))
    tampered = write_plugin(tmp_path, "tampered", component_paths["relay"], config="t",
                            subscribe=("t",))
    unlisted = write_plugin(tmp_path, "unlisted", component_paths["relay"], config="u",
                            subscribe=("u",))
    gone = write_plugin(tmp_path, "gone", component_paths["relay"], config="g",
                        subscribe=("g",))
    wrong = write_plugin(tmp_path, "wrong", component_paths["wrong"])
    lock = tmp_path / "plugins.lock"
    for plugin in (relay, tampered, gone, wrong):
        install(lock, plugin)
    with (tampered / "tampered.wasm").open("ab") as f:
        f.write(b"\0")
    (gone / "gone.wasm").unlink()

    plan = BootPlan(lock, (relay, tampered, unlisted, gone, wrong))
    async with open_kernel(engine, MemoryKv()) as kernel:
        await kernel.boot(plan)
        sup = kernel.supervisors["relay"]
        await sup.wait_for(lambda s: s.state is State.RUNNING)
        tap = Tap(kernel.bus, "demo.r")
        kernel.publish("demo", b"through the relay")
        assert (await tap.receive()).payload == b"through the relay"
        status = {p["name"]: p for p in kernel.status()["plugins"]}

    assert status["relay"]["state"] == "running"
    reasons = {name: str(status[name]["last_error"]) for name in
               ("tampered", "unlisted", "gone", "wrong")}
    assert all(status[n]["state"] == "refused" for n in reasons)
    assert "does not match plugins.lock" in reasons["tampered"]
    assert "unlisted" in reasons["unlisted"]
    assert "is missing" in reasons["gone"]
    assert "not an astrid:kernel/plugin component" in reasons["wrong"]
    assert all("\n" not in r for r in reasons.values())


async def test_boot_without_plugin_list_runs_every_lock_entry(
        tmp_path: Path, engine: KernelEngine, component_paths: dict[str, Path]) -> None:
    lock = tmp_path / "plugins.lock"
    install(lock, write_plugin(tmp_path / "p", "one", component_paths["relay"], config="one",
                               subscribe=("one",)))
    install(lock, write_plugin(tmp_path / "p", "two", component_paths["relay"], config="two",
                               subscribe=("two",)))
    async with open_kernel(engine, MemoryKv()) as kernel:
        await kernel.boot(BootPlan(lock))
        for sup in kernel.supervisors.values():
            await sup.wait_for(lambda s: s.state is State.RUNNING)
        assert sorted(kernel.supervisors) == ["one", "two"]


async def test_grants_come_from_the_lock_not_the_manifest(
        tmp_path: Path, engine: KernelEngine, component_paths: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.asks_more_than_granted")
    lock = tmp_path / "plugins.lock"
    plugin = write_plugin(tmp_path, "relay", component_paths["relay"], config="demo",
                          subscribe=("demo",))
    install(lock, plugin)  # granted: subscribe demo, publish nothing
    write_plugin(tmp_path, "relay", component_paths["relay"], config="demo",
                 publish=("demo.>",), subscribe=("demo",))  # now asks for more
    async with open_kernel(engine, MemoryKv()) as kernel:
        await kernel.boot(BootPlan(lock, (plugin,)))
        sup = kernel.supervisors["relay"]
        await sup.wait_for(lambda s: s.state is State.RUNNING)
        assert sup.spec.grants.publish == ()


async def test_warm_start_uses_the_compile_cache(
        tmp_path: Path, component_paths: dict[str, Path]) -> None:
    lock = tmp_path / "plugins.lock"
    plugin = write_plugin(tmp_path, "relay", component_paths["relay"], config="demo",
                          subscribe=("demo",))
    install(lock, plugin)
    hits = []
    for _ in range(2):
        engine = KernelEngine(cache_dir=tmp_path / "cache")
        async with open_kernel(engine, MemoryKv()) as kernel:
            await kernel.boot(BootPlan(lock))
            hits.append(kernel.boot_stats["cache_hits"])
    assert hits == [0, 1]


async def test_cache_key_changes_with_engine_settings(tmp_path: Path) -> None:
    from astrid_runtime.engine import EngineSettings

    a = KernelEngine(EngineSettings(consume_fuel=True), tmp_path)
    b = KernelEngine(EngineSettings(consume_fuel=False), tmp_path)
    assert a.cache_key("ab" * 32) != b.cache_key("ab" * 32)
    assert a.cache_key("ab" * 32) != a.cache_key("cd" * 32)
