"""NatsBridge against a real nats-server on 127.0.0.1: two bridges are two machines."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
import trio

from astrid_runtime.bus.nats.bridge import (
    BridgedMessage,
    BridgeFull,
    BridgeInvalid,
    BridgeTooLarge,
    BridgeUnavailable,
    NatsBridge,
    is_remote_origin,
    open_nats_bridge,
)
from astrid_runtime.bus.topics import matches as pattern_matches
from astrid_runtime.errors import BusError, Refusal
from tests.fixtures.nats_server import NatsServer, free_port, running_nats_server

# A guard against a hung test, never a measurement: everything here takes ms.
GUARD = 20


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with running_nats_server() as server:
        yield server


@asynccontextmanager
async def machine(server: NatsServer, name: str, **options: Any) -> AsyncIterator[NatsBridge]:
    async with open_nats_bridge(server.url, instance_id=name, **options) as bridge:
        yield bridge


async def receive(bridge: NatsBridge, count: int) -> list[BridgedMessage]:
    got = []
    with trio.fail_after(GUARD):
        for _ in range(count):
            got.append(await bridge.inbound.receive())
    return got


def test_pattern_matching() -> None:
    assert pattern_matches("a.b", "a.b")
    assert not pattern_matches("a.b", "a.b.c")
    assert pattern_matches("a.*", "a.b")
    assert not pattern_matches("a.*", "a.b.c")
    assert pattern_matches("a.>", "a.b.c")
    assert not pattern_matches("a.>", "a")
    assert pattern_matches(">", "x")
    assert pattern_matches("*.b.>", "a.b.c.d")
    assert is_remote_origin("nats:m1/p") and not is_remote_origin("notes")


def test_errors_carry_their_abi_case() -> None:
    assert isinstance(BridgeInvalid("x"), BusError)
    assert isinstance(BridgeInvalid("x"), Refusal)
    assert BridgeInvalid("x").kind == "invalid"
    assert BridgeTooLarge("x").kind == "too-large"
    assert BridgeFull("x").kind == "rate-limited"
    assert BridgeUnavailable("x").kind == "unavailable"


async def test_two_machines_exchange_in_order(nats_server: NatsServer) -> None:
    async with machine(nats_server, "m1") as m1, machine(nats_server, "m2") as m2:
        await m1.subscribe("chat.>")
        await m2.subscribe("chat.>")
        n = 2000
        for i in range(n):
            assert m1.publish("chat.to-m2", i.to_bytes(4, "big"), "writer")
            assert m2.publish("chat.to-m1", b"\x00" + i.to_bytes(4, "big"), "echo-plugin")
        at_m2 = await receive(m2, n)
        at_m1 = await receive(m1, n)
    assert [m.payload for m in at_m2] == [i.to_bytes(4, "big") for i in range(n)]
    assert {(m.topic, m.origin) for m in at_m2} == {("chat.to-m2", "nats:m1/writer")}
    assert [m.payload for m in at_m1] == [b"\x00" + i.to_bytes(4, "big") for i in range(n)]
    assert {(m.topic, m.origin) for m in at_m1} == {("chat.to-m1", "nats:m2/echo-plugin")}
    assert m1.stats.published == n and m1.stats.received == n


async def test_overlapping_patterns_deliver_once_in_order(nats_server: NatsServer) -> None:
    async with machine(nats_server, "pub") as pub, machine(nats_server, "sub") as sub:
        for pattern in ("ov.*", "ov.>", "ov.b", "*.b"):
            await sub.subscribe(pattern)
        topics = ["ov.b", "ov.c", "ov.b.c", "x.b", "ov.b", "ov.c.d", "ov.c"] * 50
        for i, topic in enumerate(topics):
            pub.publish(topic, str(i).encode(), "p")
        got = await receive(sub, len(topics))
        # Nothing more: a marker on a fresh topic arrives next, not a duplicate.
        await sub.subscribe("marker")
        pub.publish("marker", b"end", "p")
        (last,) = await receive(sub, 1)
    assert [(m.topic, m.payload) for m in got] == [
        (t, str(i).encode()) for i, t in enumerate(topics)
    ]
    assert last.payload == b"end"


async def test_binary_payloads_and_headers_survive(nats_server: NatsServer) -> None:
    payloads = [b"", b"\x00", bytes(range(256)), b"\r\n\r\nNATS/1.0\r\n", b"x" * 500_000]
    async with machine(nats_server, "a") as a, machine(nats_server, "b") as b:
        await b.subscribe("bin.*")
        for i, payload in enumerate(payloads):
            a.publish(f"bin.{i}", payload, "origin with spaces ⟩")
        got = await receive(b, len(payloads))
    assert [m.payload for m in got] == payloads
    assert {m.origin for m in got} == {"nats:a/origin with spaces ⟩"}


async def test_no_echo_and_no_loops(nats_server: NatsServer) -> None:
    async with machine(nats_server, "a") as a, machine(nats_server, "b") as b:
        await a.subscribe("loop.>")
        await b.subscribe("loop.>")
        a.publish("loop.x", b"from a", "p")
        await a.flush()  # the server has handled it (and would have echoed it)
        (at_b,) = await receive(b, 1)
        # b's kernel naively forwards what it got from NATS: refused, not sent.
        assert b.publish(at_b.topic, at_b.payload, at_b.origin) is False
        b.publish("loop.marker", b"marker", "p")
        await b.flush()
        # Had a's own message been echoed, or b's forward sent, it would come first.
        (first,) = await receive(a, 1)
        assert first.payload == b"marker"
        assert first.origin == "nats:b/p"


async def test_unsubscribe_is_refcounted(nats_server: NatsServer) -> None:
    async with machine(nats_server, "a") as a, machine(nats_server, "b") as b:
        await b.subscribe("rc.marker")
        await b.subscribe("rc.topic")
        await b.subscribe("rc.topic")
        await b.unsubscribe("rc.topic")
        a.publish("rc.topic", b"1", "p")
        assert (await receive(b, 1))[0].payload == b"1"
        await b.unsubscribe("rc.topic")
        a.publish("rc.topic", b"2", "p")
        a.publish("rc.marker", b"marker", "p")
        assert (await receive(b, 1))[0].payload == b"marker"
        with pytest.raises(BridgeInvalid, match="not subscribed"):
            await b.unsubscribe("rc.topic")


async def test_flush_does_not_overtake_publishes(nats_server: NatsServer) -> None:
    async with machine(nats_server, "a") as a, machine(nats_server, "b") as b:
        await b.subscribe("fl")
        for i in range(5000):
            a.publish("fl", str(i).encode(), "p")
        await a.flush()
        await b.flush()  # b's PONG comes after every message the server sent it
        assert b.stats.received == 5000


async def test_shutdown_sends_queued_publishes(nats_server: NatsServer) -> None:
    async with machine(nats_server, "b") as b:
        await b.subscribe("bye")
        async with machine(nats_server, "a") as a:
            for i in range(3000):
                a.publish("bye", str(i).encode(), "p")
        got = await receive(b, 3000)
    assert [m.payload for m in got] == [str(i).encode() for i in range(3000)]


async def test_slow_consumer_drops_are_bounded_and_counted(nats_server: NatsServer) -> None:
    async with machine(nats_server, "a") as a, machine(nats_server, "b", inbound_capacity=10) as b:
        await b.subscribe("slow")
        for i in range(100):
            a.publish("slow", str(i).encode(), "p")
        await a.flush()
        await b.flush()
        # 10 wait in the trio channel, 10 in the inbox, one in the pump's
        # hand; the rest are dropped.
        assert b.stats.received + b.stats.dropped_inbound == 100
        assert b.stats.dropped_inbound >= 100 - 21
        # The pump hands the inbox to the channel on its own schedule: wait
        # for each message rather than assume it has already moved.
        with trio.fail_after(10):
            got = [await b.inbound.receive() for _ in range(10)]
    assert [m.payload for m in got] == [str(i).encode() for i in range(10)]


async def test_bad_input_refused(nats_server: NatsServer) -> None:
    bridge = NatsBridge(nats_server.url)
    with pytest.raises(BridgeUnavailable, match="not running"):
        bridge.publish("a.b", b"", "p")
    async with machine(nats_server, "a") as a:
        for topic in ("", "a..b", ".a", "a.", "a.*", "a.>", "a b", "a\tb", ">"):
            with pytest.raises(BridgeInvalid, match="topic"):
                a.publish(topic, b"", "p")
        for pattern in ("", "a..b", "a.>.b", "a>", "a.b*", "a b"):
            with pytest.raises(BridgeInvalid, match="pattern"):
                await a.subscribe(pattern)
        with pytest.raises(BridgeInvalid, match="origin"):
            a.publish("a.b", b"", "bad\r\norigin")
        with pytest.raises(BridgeTooLarge, match="max_payload"):
            a.publish("a.b", b"x" * (a.max_payload + 1), "p")
        assert a.publish("a.b", b"still fine", "p")
        await a.flush()


async def test_full_outbox_refuses(nats_server: NatsServer) -> None:
    async with machine(nats_server, "a", outbound_capacity=100) as a:
        # The trio task does not yield, so the asyncio thread may or may not
        # have drained some: at most 100 are ever waiting.
        with pytest.raises(BridgeFull, match="outbox full"):
            for _ in range(100_000):
                a.publish("full", b"x" * 100, "p")
        await a.flush()
        assert a.publish("full", b"after", "p")


async def test_unreachable_server_fails_the_start_clearly() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    bridge = NatsBridge(url, reconnect_wait=0.05, connect_timeout=1)
    with pytest.raises(BridgeUnavailable, match=re.escape(f"cannot reach NATS at {url}")):
        await bridge.run()
    with pytest.raises(BridgeUnavailable, match="not running"):
        bridge.publish("a", b"", "p")


async def test_survives_server_restart(caplog: pytest.LogCaptureFixture) -> None:
    server = NatsServer()
    server.start()
    try:
        async with (
            machine(server, "a", reconnect_wait=0.05) as a,
            machine(server, "b", reconnect_wait=0.05) as b,
        ):
            await b.subscribe("rs.>")
            a.publish("rs.before", b"1", "p")
            assert (await receive(b, 1))[0].topic == "rs.before"

            with caplog.at_level(logging.INFO, logger="astrid_runtime.bus.nats.bridge"):
                server.stop()
                with trio.fail_after(GUARD):
                    await a.wait_disconnected()
                    await b.wait_disconnected()
                assert not a.stats.connected
                # Accepted while down: buffered by nats-py, sent on reconnect (or
                # counted as dropped) — never an exception in the caller.
                assert a.publish("rs.during", b"2", "p")
                server.start()
                with trio.fail_after(GUARD):
                    await a.wait_connected()
                    await b.wait_connected()
            assert "disconnected" in caplog.text and "reconnected" in caplog.text
            assert a.stats.reconnects == 1 and b.stats.reconnects == 1

            await b.flush()  # b's re-sent subscription has reached the server
            a.publish("rs.after", b"3", "p")
            with trio.fail_after(GUARD):
                while (await b.inbound.receive()).topic != "rs.after":
                    pass  # "rs.during" may or may not have made it
    finally:
        server.stop()


async def test_thread_crash_is_reported(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = NatsBridge(nats_server.url)

    async def broken(nc: object) -> None:
        raise RuntimeError("boom")

    bridge._drain_outbox = broken  # type: ignore[method-assign]
    with pytest.raises(BridgeUnavailable, match="boom"):
        await bridge.run()
    assert "NATS bridge thread failed" in caplog.text
    assert not bridge.stats.connected


async def test_publish_from_worker_threads(nats_server: NatsServer) -> None:
    async with machine(nats_server, "a") as a, machine(nats_server, "b") as b:
        await b.subscribe("thr.*")

        def worker(n: int) -> None:  # a host function publishing from its thread
            for i in range(200):
                a.publish(f"thr.{n}", i.to_bytes(2, "big"), f"plugin{n}")

        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(trio.to_thread.run_sync, worker, n)
        got = await receive(b, 800)
    for n in range(4):  # per-publisher order holds for each thread
        mine = [m.payload for m in got if m.origin == f"nats:a/plugin{n}"]
        assert mine == [i.to_bytes(2, "big") for i in range(200)]


async def test_subject_prefixes_separate_buses(nats_server: NatsServer) -> None:
    async with (
        machine(nats_server, "a", subject_prefix="bus1.") as a,
        machine(nats_server, "b", subject_prefix="bus2.") as b,
        machine(nats_server, "c", subject_prefix="bus2.") as c,
    ):
        await b.subscribe(">")
        a.publish("t", b"bus1", "p")
        c.publish("t", b"bus2", "p")
        (got,) = await receive(b, 1)
    assert (got.topic, got.payload) == ("t", b"bus2")


async def test_message_from_a_plain_nats_client(nats_server: NatsServer) -> None:
    def plain_publish() -> None:
        async def go() -> None:
            nc = await nats.connect(nats_server.url)
            await nc.publish("astrid.ext.topic", b"hello")
            await nc.flush()
            await nc.close()

        asyncio.run(go())

    async with machine(nats_server, "b") as b:
        await b.subscribe("ext.>")
        await trio.to_thread.run_sync(plain_publish)
        (got,) = await receive(b, 1)
    # A bridge without peers verifies nothing (the kernel always passes peers;
    # test_bridge_trust.py shows such a client refused there).
    assert got == ("ext.topic", b"hello", "nats:external", None)
