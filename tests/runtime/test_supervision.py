"""Hostile plugins: traps, infinite loops and memory bombs are stopped and
restarted with backoff, repeated crashes disable a plugin, and every other
plugin keeps serving throughout."""

from __future__ import annotations

import pytest
from testkit import FAST_RESTART, ExpectedLogs, running, spec
from wasmtime.component import Component

from astrid_runtime.bus import Tap
from astrid_runtime.grants import Grants
from astrid_runtime.kernel import Kernel
from astrid_runtime.supervisor import State, Supervisor

HOSTILE = Grants(subscribe=("hostile.>",))


@pytest.fixture(autouse=True)
def _crashes_expected(expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.crashed", "plugin.disabled")


async def restarted(sup: Supervisor, crashes: int) -> None:
    await sup.wait_for(lambda s: s.crashes >= crashes and s.state is State.RUNNING)


async def echo_still_serves(kernel: Kernel, tap: Tap, text: bytes) -> None:
    kernel.publish("echo.in", text)
    assert (await tap.receive()).payload == text


async def test_trap_is_stopped_and_restarted_while_others_serve(
        kernel: Kernel, components: dict[str, Component]) -> None:
    echo = await running(kernel, spec(components, "pyecho"))
    bad = await running(kernel, spec(components, "hostile", grants=HOSTILE, limits=FAST_RESTART))
    tap = Tap(kernel.bus, "echo.out")
    kernel.publish("hostile.trap", b"")
    await restarted(bad, 1)
    assert "unreachable" in (bad.last_error or "")
    assert bad.restarts == 1 and bad.poisoned == 1
    await echo_still_serves(kernel, tap, b"still here")
    assert echo.crashes == 0


async def test_infinite_loop_is_stopped_by_the_epoch_deadline(
        kernel: Kernel, components: dict[str, Component]) -> None:
    bad = await running(kernel, spec(components, "hostile", grants=HOSTILE, limits=FAST_RESTART))
    await running(kernel, spec(components, "pyecho"))
    tap = Tap(kernel.bus, "echo.out")
    kernel.publish("hostile.loop", b"")
    await echo_still_serves(kernel, tap, b"while it spins")
    await restarted(bad, 1)
    assert bad.last_error is not None and "deadline exceeded" in bad.last_error


async def test_infinite_loop_runs_out_of_fuel(
        kernel: Kernel, components: dict[str, Component]) -> None:
    limits = FAST_RESTART.replace(fuel_per_call=1_000_000, call_timeout_ms=60_000)
    bad = await running(kernel, spec(components, "hostile", grants=HOSTILE, limits=limits))
    kernel.publish("hostile.loop", b"")
    await restarted(bad, 1)
    assert bad.last_error is not None and "fuel exhausted" in bad.last_error


async def test_memory_bomb_is_stopped_by_the_store_limit(
        kernel: Kernel, components: dict[str, Component]) -> None:
    bad = await running(kernel, spec(components, "hostile", grants=HOSTILE, limits=FAST_RESTART))
    await running(kernel, spec(components, "pyecho"))
    tap = Tap(kernel.bus, "echo.out")
    kernel.publish("hostile.bomb", b"")
    await restarted(bad, 1)
    # memory.grow failed at the 64 MiB limit and the guest trapped on it
    assert "unreachable" in (bad.last_error or "")
    await echo_still_serves(kernel, tap, b"after the bomb")


async def test_python_plugin_loop_and_hog_are_stopped_and_queued_mail_survives(
        kernel: Kernel, components: dict[str, Component]) -> None:
    limits = FAST_RESTART.replace(call_timeout_ms=500, memory_bytes=96 * 1024 * 1024)
    echo = await running(kernel, spec(components, "pyecho", limits=limits))
    tap = Tap(kernel.bus, "echo.out")
    kernel.publish("echo.loop", b"")
    kernel.publish("echo.in", b"queued behind the loop")
    assert (await tap.receive()).payload == b"queued behind the loop"
    assert echo.crashes == 1 and echo.poisoned == 1
    kernel.publish("echo.hog", b"")
    kernel.publish("echo.in", b"queued behind the hog")
    assert (await tap.receive()).payload == b"queued behind the hog"
    assert echo.crashes == 2 and echo.state is State.RUNNING


async def test_repeated_crashes_disable_the_plugin_and_others_keep_serving(
        kernel: Kernel, components: dict[str, Component]) -> None:
    limits = FAST_RESTART.replace(max_crashes=3)
    bad = kernel.start(spec(components, "hostile", config="trap", grants=HOSTILE, limits=limits))
    await running(kernel, spec(components, "pyecho"))
    tap = Tap(kernel.bus, "echo.out")
    await bad.wait_for(lambda s: s.state is State.DISABLED)
    assert bad.crashes == 3 and bad.restarts == 2
    assert bad.last_error is not None and "3 crashes within" in bad.last_error
    status = {p["name"]: p for p in kernel.status()["plugins"]}
    assert status["hostile"]["state"] == "disabled"
    assert status["hostile"]["subscriptions"] == []
    await echo_still_serves(kernel, tap, b"unaffected")


async def test_init_that_loops_is_stopped(
        kernel: Kernel, components: dict[str, Component]) -> None:
    limits = FAST_RESTART.replace(max_crashes=2)
    bad = kernel.start(spec(components, "hostile", config="loop", grants=HOSTILE, limits=limits))
    await bad.wait_for(lambda s: s.state is State.DISABLED)
    assert "deadline exceeded" in (bad.last_error or "")


async def test_mail_to_a_disabled_plugin_is_not_queued(
        kernel: Kernel, components: dict[str, Component]) -> None:
    limits = FAST_RESTART.replace(max_crashes=1)
    bad = await running(kernel, spec(components, "hostile", grants=HOSTILE, limits=limits))
    kernel.publish("hostile.trap", b"")
    await bad.wait_for(lambda s: s.state is State.DISABLED)
    assert kernel.publish("hostile.ok", b"") == 0
