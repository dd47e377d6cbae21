"""Issue 12, hole 1: the compile cache is authenticated before it is deserialized.

A compiled artifact is native code. These tests plant what an attacker with
write access to the cache would plant — another plugin's artifact under
the pinned plugin's key, machine code overwritten with `int3`, an artifact
wasmtime wrote without our seal — and show the kernel recompiles the
verified `.wasm` instead of running it, and says so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from testkit import ExpectedLogs, MemoryKv, install, write_plugin

from astrid_runtime.bus import Tap
from astrid_runtime.engine import CACHE_MAGIC, KernelEngine, digest
from astrid_runtime.kernel import BootPlan, open_kernel
from astrid_runtime.supervisor import State


def _engine(home: Path) -> KernelEngine:
    return KernelEngine(cache_dir=home / "cache", epoch_tick_ms=5)


def test_another_plugins_artifact_under_the_pinned_key_is_rejected(
        tmp_path: Path, component_paths: dict[str, Path]) -> None:
    engine = _engine(tmp_path)
    relay = component_paths["relay"].read_bytes()
    hostile = component_paths["hostile"].read_bytes()
    engine.compile(relay)
    engine.compile(hostile)
    relay_entry = engine.cache_path(digest(relay))
    hostile_entry = engine.cache_path(digest(hostile))
    assert relay_entry is not None and hostile_entry is not None
    shutil.copyfile(hostile_entry, relay_entry)  # the attack

    result = engine.compile(relay)

    assert not result.cache_hit
    assert result.cache_note is not None and "failed its MAC" in result.cache_note
    # The entry now holds relay's own artifact again, sealed for relay.
    assert relay_entry.read_bytes() != hostile_entry.read_bytes()
    assert engine.unseal(digest(relay), relay_entry.read_bytes()) is not None
    assert engine.compile(relay).cache_hit


def test_int3_over_machine_code_is_rejected(tmp_path: Path,
                                            component_paths: dict[str, Path]) -> None:
    engine = _engine(tmp_path)
    relay = component_paths["relay"].read_bytes()
    engine.compile(relay)
    entry = engine.cache_path(digest(relay))
    assert entry is not None
    data = bytearray(entry.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = b"\xcc" * 64  # int3
    entry.write_bytes(bytes(data))

    result = engine.compile(relay)

    assert not result.cache_hit and result.cache_note is not None


def test_an_unsealed_wasmtime_artifact_is_not_deserialized(
        tmp_path: Path, component_paths: dict[str, Path]) -> None:
    engine = _engine(tmp_path)
    relay = component_paths["relay"].read_bytes()
    entry = engine.cache_path(digest(relay))
    assert entry is not None
    # What the cache held before it was sealed: wasmtime's bytes alone.
    entry.write_bytes(bytes(engine.compile(relay).component.serialize()))
    assert not entry.read_bytes().endswith(CACHE_MAGIC)
    assert not engine.compile(relay).cache_hit


def test_a_cached_artifact_is_mapped_from_its_file_not_copied(
        tmp_path: Path, component_paths: dict[str, Path]) -> None:
    """Memory (issue 12): the code pages a plugin never runs stay out of the kernel's RSS."""
    relay = component_paths["relay"].read_bytes()
    _engine(tmp_path).compile(relay)  # fills the cache
    engine = _engine(tmp_path)  # a fresh kernel: nothing loaded yet
    entry = engine.cache_path(digest(relay))
    assert entry is not None
    result = engine.compile(relay)
    assert result.cache_hit
    maps = Path("/proc/self/maps").read_text()
    assert str(entry.resolve()) in maps


def test_one_component_per_pinned_hash_while_it_is_held(
        tmp_path: Path, component_paths: dict[str, Path]) -> None:
    engine = _engine(tmp_path)
    relay = component_paths["relay"].read_bytes()
    first = engine.compile(relay)
    again = engine.compile(relay, digest(relay))
    assert again.component is first.component and again.cache_hit


def test_an_entry_sealed_by_another_kernel_is_rejected(
        tmp_path: Path, component_paths: dict[str, Path]) -> None:
    relay = component_paths["relay"].read_bytes()
    other = KernelEngine(cache_dir=tmp_path / "other" / "cache")
    other.compile(relay)
    ours = _engine(tmp_path / "ours")
    src, dst = other.cache_path(digest(relay)), ours.cache_path(digest(relay))
    assert src is not None and dst is not None
    shutil.copyfile(src, dst)
    assert not ours.compile(relay).cache_hit


def test_a_cache_dir_others_can_write_is_not_used(tmp_path: Path,
                                                  component_paths: dict[str, Path]) -> None:
    (tmp_path / "cache").mkdir()
    os.chmod(tmp_path / "cache", 0o777)
    engine = _engine(tmp_path)
    assert engine.cache_refused is not None and "writable by others" in engine.cache_refused
    result = engine.compile(component_paths["relay"].read_bytes())
    assert not result.cache_hit and result.cache_note == engine.cache_refused
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_fresh_cache_dir_is_private(tmp_path: Path) -> None:
    _engine(tmp_path)
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700


async def test_the_kernel_runs_the_pinned_code_not_the_planted_artifact(
        tmp_path: Path, component_paths: dict[str, Path], expect_logs: ExpectedLogs,
        caplog: pytest.LogCaptureFixture) -> None:
    expect_logs.allow("plugin.cache_rejected")
    lock = tmp_path / "plugins.lock"
    plugin = write_plugin(tmp_path, "relay", component_paths["relay"], config="demo",
                          publish=("demo.>",), subscribe=("demo",))
    install(lock, plugin)
    engine = _engine(tmp_path / "home")
    relay = component_paths["relay"].read_bytes()
    hostile = component_paths["hostile"].read_bytes()
    engine.compile(hostile)
    planted, target = engine.cache_path(digest(hostile)), engine.cache_path(digest(relay))
    assert planted is not None and target is not None
    shutil.copyfile(planted, target)

    async with open_kernel(engine, MemoryKv()) as kernel:
        await kernel.boot(BootPlan(lock))
        assert kernel.boot_stats["cache_hits"] == 0
        sup = kernel.supervisors["relay"]
        await sup.wait_for(lambda s: s.state is State.RUNNING)
        tap = Tap(kernel.bus, "demo.r")
        kernel.publish("demo", b"pinned code runs")
        assert (await tap.receive()).payload == b"pinned code runs"
    assert "plugin.cache_rejected" in [r.getMessage() for r in caplog.records]


async def test_install_compiles_so_the_first_boot_is_warm_and_status_shows_progress(
        tmp_path: Path, component_paths: dict[str, Path]) -> None:
    import subprocess
    import sys
    from typing import Any

    from astrid_runtime.kernel import Kernel
    from astrid_runtime.logs import KernelLog

    home = tmp_path / "home"
    lock = tmp_path / "plugins.lock"
    for name in ("alpha", "beta"):
        plugin = write_plugin(tmp_path, name, component_paths["relay"], config=name,
                              subscribe=(name,))
        done = subprocess.run([sys.executable, "-m", "astrid_runtime.client_cli", "--lockfile",
                               str(lock), "plugin", "install", str(plugin)],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "ASTRID_HOME": str(home)})
        assert done.returncode == 0, done.stderr
        assert f"compiling {name} into {home / 'cache'}" in done.stdout

    snapshots: list[dict[str, str]] = []
    booting: list[Kernel] = []

    class Spy(KernelLog):
        """Records what `status()` says as each plugin starts compiling."""

        def event(self, level: str, event: str, **fields: Any) -> None:
            if event == "plugin.verified":
                status = booting[0].status()["plugins"]
                snapshots.append({p["name"]: p["state"] for p in status})
            super().event(level, event, **fields)

    engine = KernelEngine(cache_dir=home / "cache")
    async with open_kernel(engine, MemoryKv(), log=Spy()) as kernel:
        booting.append(kernel)
        await kernel.boot(BootPlan(lock))
        assert kernel.boot_stats["cache_hits"] == 2  # nothing compiled at boot
        assert {p["state"] for p in kernel.status()["plugins"]} <= {"starting", "running"}
    assert snapshots == [{"alpha": "compiling", "beta": "queued"},
                         {"alpha": "compiled", "beta": "compiling"}]


def _waiting_for_flock(pid: int) -> bool:
    """Is process `pid` blocked on a flock (a `->` line of /proc/locks)?"""
    with open("/proc/locks") as f:
        return any("->" in line and "FLOCK" in line and f" {pid} " in line for line in f)


def test_a_compile_another_process_is_doing_is_waited_for_not_repeated(
        tmp_path: Path, component_paths: dict[str, Path]) -> None:
    """Kernels sharing a cache (a boot while `astrid plugin install` precompiles the
    same pin; pytest-xdist workers) compile an entry once: a miss locks the entry,
    and whoever waited on that lock loads what the first one wrote."""
    import fcntl
    import subprocess
    import sys
    import time

    from wasmtime.component import Component

    from astrid_runtime.atomic import write_atomic

    engine = _engine(tmp_path)
    wasm = component_paths["relay"]
    entry = engine.cache_path(digest(wasm.read_bytes()))
    assert entry is not None
    # This test is the process compiling it: it holds the entry's lock...
    with open(entry.with_name(f".{entry.stem}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        other = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; from pathlib import Path; "
             "from astrid_runtime.engine import KernelEngine; "
             "e = KernelEngine(cache_dir=Path(sys.argv[1]), epoch_tick_ms=5); "
             "print(e.compile(Path(sys.argv[2]).read_bytes()).cache_hit)",
             str(tmp_path / "cache"), str(wasm)],
            stdout=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60  # a bound, not synchronisation
            while not _waiting_for_flock(other.pid):
                assert other.poll() is None, "the second compile did not wait for the first"
                assert time.monotonic() < deadline, "the second compile never took the lock"
                time.sleep(0.01)
            # ...and writes the entry while the other process waits.
            artifact = Component(engine.engine, wasm.read_bytes()).serialize()
            write_atomic(entry, engine.seal(digest(wasm.read_bytes()), bytes(artifact)))
        except BaseException:
            other.kill()
            raise
    out, _ = other.communicate(timeout=60)
    assert other.returncode == 0 and out.strip() == "True"  # loaded, not compiled again
