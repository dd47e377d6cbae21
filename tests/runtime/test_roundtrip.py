"""A Python component plugin end to end: bus in, bus out, kv, log, errors."""

from __future__ import annotations

import logging

import pytest
from testkit import ExpectedLogs, MemoryKv, running, spec
from wasmtime.component import Component

from astrid_runtime.bus import Tap
from astrid_runtime.errors import BusError
from astrid_runtime.kernel import Kernel
from astrid_runtime.supervisor import State


async def test_publish_reaches_plugin_and_reply_comes_back(
        kernel: Kernel, components: dict[str, Component]) -> None:
    await running(kernel, spec(components, "pyecho"))
    tap = Tap(kernel.bus, "echo.out")
    assert kernel.publish("echo.in", b"hello") == 1
    message = await tap.receive()
    assert (message.topic, message.payload, message.publisher) == ("echo.out", b"hello", "pyecho")


async def test_large_payloads_survive_the_bulk_path(
        kernel: Kernel, components: dict[str, Component]) -> None:
    await running(kernel, spec(components, "pyecho"))
    tap = Tap(kernel.bus, "echo.out")
    for size in (0, 1, 1023, 64 * 1024, 1024 * 1024):
        payload = bytes((i * 7 + size) % 256 for i in range(size))
        kernel.publish("echo.in", payload)
        assert (await tap.receive()).payload == payload


async def test_kv_round_trip_through_the_abi(
        kernel: Kernel, components: dict[str, Component], kv: MemoryKv) -> None:
    await running(kernel, spec(components, "pyecho"))
    tap = Tap(kernel.bus, "echo.kv.out")
    kernel.publish("echo.kv", b"\x00\xffvalue")
    assert (await tap.receive()).payload == b"\x00\xffvalue"
    assert kv.get("pyecho", "last") == b"\x00\xffvalue"
    assert kv.list("other", "") == []


async def test_publish_outside_grant_is_an_error_value_not_a_crash(
        kernel: Kernel, components: dict[str, Component]) -> None:
    sup = await running(kernel, spec(components, "pyecho"))
    tap = Tap(kernel.bus, "echo.error")
    kernel.publish("echo.denied", b"x")
    message = await tap.receive()
    assert message.payload == b"Error_Denied:publish to 'forbidden.topic' not granted"
    assert sup.state is State.RUNNING and sup.crashes == 0


async def test_plugin_err_is_counted_not_a_crash(
        kernel: Kernel, components: dict[str, Component], caplog: pytest.LogCaptureFixture,
        expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.refused_message")
    sup = await running(kernel, spec(components, "pyecho"))
    tap = Tap(kernel.bus, "echo.out")
    with caplog.at_level(logging.WARNING, "astrid"):
        kernel.publish("echo.fail", b"")
        kernel.publish("echo.in", b"after")
        assert (await tap.receive()).payload == b"after"
    assert sup.errors == 1 and sup.crashes == 0
    assert any("asked to fail" in str(getattr(r, "astrid_fields", "")) for r in caplog.records)


async def test_plugin_log_lines_reach_the_kernel_log(
        engine: object, components: dict[str, Component], kernel: Kernel,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "astrid"):
        await running(kernel, spec(components, "pyecho"))
    lines = [r for r in caplog.records if r.name == "astrid.plugin.pyecho"]
    assert lines and lines[0].getMessage() == "pyecho ready"
    assert lines[0].astrid_fields == {"plugin": "pyecho", "pattern": "echo.>"}  # type: ignore[attr-defined]


async def test_client_publish_validates_topic_and_size(kernel: Kernel) -> None:
    with pytest.raises(BusError) as e:
        kernel.publish("bad..topic", b"")
    assert e.value.kind == "invalid"
    with pytest.raises(BusError) as big:
        kernel.publish("fine", b"x" * (1024 * 1024 + 1))
    assert big.value.kind == "too-large"


async def test_status_reports_plugins(kernel: Kernel, components: dict[str, Component]) -> None:
    await running(kernel, spec(components, "pyecho"))
    status = kernel.status()
    (plugin,) = status["plugins"]
    assert plugin["name"] == "pyecho" and plugin["state"] == "running"
    assert plugin["subscriptions"] == ["echo.>"]


async def test_kv_without_grant_is_denied(
        kernel: Kernel, components: dict[str, Component]) -> None:
    from astrid_runtime.grants import Grants

    await running(kernel, spec(components, "pyecho",
                               grants=Grants(publish=("echo.>",), subscribe=("echo.>",))))
    tap = Tap(kernel.bus, "echo.error")
    kernel.publish("echo.kv", b"v")
    assert (await tap.receive()).payload == b"Error_Denied:kv not granted"


async def test_kv_list_and_delete(kernel: Kernel, components: dict[str, Component]) -> None:
    await running(kernel, spec(components, "pyecho"))
    tap = Tap(kernel.bus, "echo.kv.keys")
    kernel.publish("echo.kv", b"v")
    assert (await tap.receive()).payload == b"last/False"


async def test_cap_and_vfs_refuse_until_built(
        kernel: Kernel, components: dict[str, Component]) -> None:
    from astrid_runtime.grants import Grants

    grants = Grants(publish=("echo.>",), subscribe=("echo.>",), vfs=("workspace",))
    await running(kernel, spec(components, "pyecho", grants=grants))
    tap = Tap(kernel.bus, "echo.error")
    kernel.publish("echo.cap", b"workspace")
    assert (await tap.receive()).payload == b"Error_Denied:action 'net.http' not granted"
    assert (await tap.receive()).payload == (
        b"Error_Unavailable:no vfs roots in this kernel (no session mounted)")
    kernel.publish("echo.cap", b"/mnt/s3")
    await tap.receive()
    assert (await tap.receive()).payload == b"Error_Denied:vfs root '/mnt/s3' not granted"


def test_plugin_log_fields_cannot_forge_the_line(expect_logs: ExpectedLogs) -> None:
    import json

    expect_logs.allow("hello")
    from astrid_runtime.logs import JsonFormatter, KernelLog

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("astrid.plugin.liar")
    handler = Keep()
    logger.addHandler(handler)
    try:
        KernelLog().plugin_line("liar", "warn", "hello",
                                [("plugin", "router"), ("level", "error"), ("x", "1")])
    finally:
        logger.removeHandler(handler)
    line = json.loads(JsonFormatter().format(records[0]))
    assert (line["plugin"], line["level"], line["message"], line["x"]) == (
        "liar", "warning", "hello", "1")
