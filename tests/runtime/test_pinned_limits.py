"""Issue 12, holes 2 and 3: limits, grants and config are pinned at install, under
the kernel's ceilings, and wildcard grants need the operator's consent.

The attacks: raise `call_timeout_ms`, fuel and `max_crashes` in `plugin.toml`
after install (they used to be re-read at every boot); hand-edit the lock
past what the kernel allows; ask for `>` and get it without a word.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from testkit import ExpectedLogs, MemoryKv, install, write_plugin

from astrid_runtime.bus import Tap
from astrid_runtime.engine import KernelEngine
from astrid_runtime.grants import DEFAULT_CEILINGS, GrantPolicy, Limits
from astrid_runtime.install import describe, plan_install
from astrid_runtime.kernel import BootPlan, open_kernel
from astrid_runtime.lockfile import load_lockfile
from astrid_runtime.supervisor import State

ASTRID = [sys.executable, "-m", "astrid_runtime.client_cli"]
PINNED = ('[limits]\ncall_timeout_ms = 100\nmax_crashes = 2\nbackoff_initial_s = 0.1\n'
          'backoff_max_s = 0.2\nmemory_mb = 64\n')
EVIL = ('[limits]\ncall_timeout_ms = 25000\nfuel_per_call = 1000000000000000\n'
        'max_crashes = 100\nbackoff_initial_s = 0.1\nbackoff_max_s = 0.2\nmemory_mb = 64\n')


def _hostile(root: Path, component: Path, limits: str) -> Path:
    return write_plugin(root, "hostile", component, subscribe=("hostile.>",), extra=limits)


def test_the_lock_records_every_limit_and_reads_it_back(
        tmp_path: Path, component_paths: dict[str, Path]) -> None:
    lock = tmp_path / "plugins.lock"
    install(lock, _hostile(tmp_path, component_paths["hostile"], PINNED))
    text = lock.read_text()
    assert "[plugin.limits]" in text and "call_timeout_ms = 100" in text
    limits = load_lockfile(lock).entries[0].limits
    assert (limits.call_timeout_ms, limits.max_crashes, limits.memory_bytes) == (
        100, 2, 64 * 1024 * 1024)


async def test_limits_raised_in_the_manifest_after_install_change_nothing(
        tmp_path: Path, engine: KernelEngine, component_paths: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.asks_more_than_granted", "plugin.crashed", "plugin.disabled")
    lock = tmp_path / "plugins.lock"
    plugin = _hostile(tmp_path, component_paths["hostile"], PINNED)
    install(lock, plugin)
    _hostile(tmp_path, component_paths["hostile"], EVIL)  # the attack: edit after install

    async with open_kernel(engine, MemoryKv()) as kernel:
        await kernel.boot(BootPlan(lock))
        sup = kernel.supervisors["hostile"]
        assert sup.spec.limits.call_timeout_ms == 100
        assert sup.spec.limits.max_crashes == 2
        await sup.wait_for(lambda s: s.state is State.RUNNING)
        for _ in range(2):  # each loop is cut at the pinned 100 ms, not 25 s
            await sup.wait_for(lambda s: s.state in (State.RUNNING, State.DISABLED))
            if sup.state is State.RUNNING:
                kernel.publish("hostile.loop", b"")
                await sup.wait_for(lambda s: s.state is not State.RUNNING)
        await sup.wait_for(lambda s: s.state is State.DISABLED)
        assert sup.crashes == 2  # the pinned max_crashes, not the manifest's 100
        assert "deadline exceeded" in (sup.last_error or "")


def test_the_lock_pins_the_config_and_install_shows_it(
        tmp_path: Path, component_paths: dict[str, Path]) -> None:
    lock = tmp_path / "plugins.lock"
    plugin = write_plugin(tmp_path, "relay", component_paths["relay"], config="a",
                          subscribe=("a",), publish=("a.r",))
    install(lock, plugin)
    assert 'config = "a"' in lock.read_text()
    assert load_lockfile(lock).entries[0].config == "a"
    plan = plan_install(plugin, GrantPolicy())
    assert '  config     "a"' in describe(plan.entry)


async def test_config_changed_in_the_manifest_after_install_changes_nothing(
        tmp_path: Path, engine: KernelEngine, component_paths: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    """The relay subscribes to the pattern its config names: the manifest is edited to
    point it at `b` (granted too), but the kernel hands init the pinned `a`."""
    expect_logs.allow("plugin.config_differs_from_pin")
    lock = tmp_path / "plugins.lock"
    grants = {"subscribe": ("a", "b"), "publish": ("a.r", "b.r")}
    install(lock, write_plugin(tmp_path, "relay", component_paths["relay"], config="a",
                               **grants))
    write_plugin(tmp_path, "relay", component_paths["relay"], config="b", **grants)
    async with open_kernel(engine, MemoryKv()) as kernel:
        await kernel.boot(BootPlan(lock))
        sup = kernel.supervisors["relay"]
        assert sup.spec.config == "a"
        await sup.wait_for(lambda s: s.state is State.RUNNING)
        relayed = Tap(kernel.bus, "*.r")
        kernel.publish("b", b"1")  # would be relayed first if init had been given b
        kernel.publish("a", b"2")
        first = await relayed.receive()
        assert (first.topic, first.payload) == ("a.r", b"2")
        assert relayed.endpoint.depth() == 0


async def test_a_lock_edited_past_the_ceilings_is_refused_at_boot(
        tmp_path: Path, engine: KernelEngine, component_paths: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.refused")
    lock = tmp_path / "plugins.lock"
    install(lock, _hostile(tmp_path, component_paths["hostile"], PINNED))
    lock.write_text(lock.read_text().replace("call_timeout_ms = 100",
                                             "call_timeout_ms = 25000"))
    async with open_kernel(engine, MemoryKv()) as kernel:
        await kernel.boot(BootPlan(lock))
        assert "hostile" not in kernel.supervisors
        reason = kernel.refused["hostile"].reason
        assert "call_timeout_ms 25000 (ceiling 5000)" in reason


def test_limits_over_ceilings_and_floors() -> None:
    ceilings = DEFAULT_CEILINGS
    assert Limits().over(ceilings) == []
    assert Limits(fuel_per_call=0).over(ceilings) == [
        "fuel_per_call unmetered (ceiling 20000000000)"]
    assert Limits(max_crashes=100, crash_window_s=0.001).over(ceilings) == [
        "max_crashes 100 (ceiling 5)", "crash_window_s 0.001 (floor 60)"]
    assert Limits(fuel_per_call=0).over(Limits(fuel_per_call=0)) == []


def test_install_refuses_limits_over_the_kernel_ceilings(
        tmp_path: Path, component_paths: dict[str, Path]) -> None:
    plugin = _hostile(tmp_path, component_paths["hostile"], EVIL)
    plan = plan_install(plugin, GrantPolicy())
    assert plan.problems == (
        "call_timeout_ms 25000 (ceiling 5000) is over the kernel's ceiling",
        "fuel_per_call 1000000000000000 (ceiling 20000000000) is over the kernel's ceiling",
        "max_crashes 100 (ceiling 5) is over the kernel's ceiling")
    config = tmp_path / "astridd.toml"
    config.write_text("[ceilings]\ncall_timeout_ms = 30000\nfuel_per_call = 0\n"
                      "max_crashes = 100\n")
    done = subprocess.run([*ASTRID, "--config", str(config), "--lockfile",
                           str(tmp_path / "plugins.lock"), "plugin", "install",
                           "--allow-wildcards", str(plugin)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr  # an operator who raised the ceilings may
    refused = subprocess.run([*ASTRID, "--lockfile", str(tmp_path / "other.lock"), "plugin",
                              "install", "--allow-wildcards", str(plugin)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.startswith("astrid: plugin hostile cannot be installed under this "
                                     "kernel's policy: call_timeout_ms 25000 (ceiling 5000)")
    assert not (tmp_path / "other.lock").exists()


def test_wildcard_grants_need_explicit_consent(
        tmp_path: Path, component_paths: dict[str, Path]) -> None:
    snoop = write_plugin(tmp_path, "snoop", component_paths["relay"], config=">",
                         subscribe=(">",), publish=(">",))
    lock = tmp_path / "plugins.lock"

    def astrid(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ASTRID, "--lockfile", str(lock), *args], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)

    silent = astrid("plugin", "install", str(snoop))
    assert silent.returncode == 1
    assert "  subscribe  >\n" in silent.stdout and "  publish    >\n" in silent.stdout
    assert silent.stderr == ("astrid: plugin snoop asks for wildcard grants (publish >, "
                             "subscribe >), which reach other plugins' topics; re-run with "
                             "--allow-wildcards to grant them\n")
    assert not lock.exists()
    assert astrid("plugin", "install", "--allow-wildcards", str(snoop)).returncode == 0
    assert load_lockfile(lock).entries[0].grants.subscribe == (">",)


async def test_a_policy_forbidding_wildcards_refuses_them_at_install_and_boot(
        tmp_path: Path, engine: KernelEngine, component_paths: dict[str, Path],
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.refused")
    snoop = write_plugin(tmp_path, "snoop", component_paths["relay"], config=">",
                         subscribe=(">",))
    policy = GrantPolicy(allow_wildcards=False)
    assert plan_install(snoop, policy).problems == (
        "wildcard grant subscribe > is forbidden by the kernel's policy",)
    lock = tmp_path / "plugins.lock"
    install(lock, snoop)  # pinned under a permissive policy, then the policy changed
    async with open_kernel(engine, MemoryKv(), policy=policy) as kernel:
        await kernel.boot(BootPlan(lock))
        assert "forbidden by the kernel's policy" in kernel.refused["snoop"].reason


@pytest.mark.parametrize("text, expected", [
    ("[ceilings]\ncall_timeout_ms = -1\n", "astridd.toml:2: call_timeout_ms: must not be "
     "negative"),
    ("allow_wildcard_grants = 1\n", "astridd.toml:1: allow_wildcard_grants must be bool, not int"),
])
def test_ceiling_config_errors_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    from astrid_runtime.config import load_config
    from astrid_runtime.errors import ConfigError

    config = tmp_path / "astridd.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(config)
    assert str(e.value).endswith(expected)
