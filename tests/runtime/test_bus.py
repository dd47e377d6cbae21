"""The bus without WebAssembly: grants, limits, the full-mailbox policy,
per-publisher order, taps; and the same through two real relay plugins."""

from __future__ import annotations

import threading

import pytest
import trio
from testkit import ExpectedLogs, running, spec
from wasmtime.component import Component

from astrid_runtime.bus import Bus, Doorbell, Endpoint, Tap
from astrid_runtime.errors import BusError
from astrid_runtime.grants import Grants, Limits
from astrid_runtime.kernel import Kernel
from astrid_runtime.supervisor import State


def endpoint(bus: Bus, name: str, grants: Grants | None = None, **limits: int) -> Endpoint:
    bell = Doorbell(trio.lowlevel.current_trio_token(), threading.get_ident())
    return bus.attach(name, grants, Limits(**limits), bell)  # type: ignore[arg-type]


def drain(ep: Endpoint) -> list[bytes]:
    out = []
    while (m := ep.take()) is not None:
        out.append(m.payload)
    return out


async def test_full_mailbox_refuses_all_or_nothing() -> None:
    bus = Bus()
    fast = endpoint(bus, "fast", mailbox=10)
    slow = endpoint(bus, "slow", mailbox=2)
    pub = endpoint(bus, "pub", Grants(publish=("t",)))
    fast.subscribe("t")
    slow.subscribe("t")
    pub.publish("t", b"1")
    pub.publish("t", b"2")
    with pytest.raises(BusError) as e:
        pub.publish("t", b"3")
    assert e.value.kind == "rate-limited" and "mailbox of slow is full" in e.value.message
    # nobody got message 3, so a retry cannot duplicate it
    assert drain(fast) == [b"1", b"2"] and drain(slow) == [b"1", b"2"]
    assert slow.mailbox.stats.refused == 1
    pub.publish("t", b"3")  # room again: the retry goes through
    assert drain(fast) == [b"3"] and drain(slow) == [b"3"]


async def test_per_publisher_order_is_kept_across_publishers_and_threads() -> None:
    bus = Bus()
    sink = endpoint(bus, "sink", mailbox=10_000)
    sink.subscribe(">")
    pubs = [endpoint(bus, f"p{i}", Grants(publish=(">",))) for i in range(4)]

    def flood(ep: Endpoint) -> None:
        for n in range(500):
            ep.publish(f"from.{ep.name}", n.to_bytes(4, "big"))

    threads = [threading.Thread(target=flood, args=(p,)) for p in pubs]
    for t in threads:
        t.start()
    for t in threads:
        await trio.to_thread.run_sync(t.join)
    seen: dict[str, list[int]] = {}
    while (m := sink.take()) is not None:
        seen.setdefault(m.publisher, []).append(int.from_bytes(m.payload, "big"))
    for name, numbers in seen.items():
        assert numbers == sorted(numbers), name
    assert sum(len(v) for v in seen.values()) == 2000


async def test_grants_payload_and_rate_limits() -> None:
    bus = Bus()
    pub = endpoint(bus, "pub", Grants(publish=("ok.>",), subscribe=("ok.*",)),
                   max_payload_bytes=8, publish_per_sec=2)
    with pytest.raises(BusError) as denied:
        pub.publish("other", b"")
    assert denied.value.kind == "denied"
    with pytest.raises(BusError) as sub_denied:
        pub.subscribe("ok.>")
    assert sub_denied.value.kind == "denied"
    assert pub.subscribe("ok.*") == pub.subscribe("ok.*")  # idempotent
    with pytest.raises(BusError) as big:
        pub.publish("ok.x", b"123456789")
    assert big.value.kind == "too-large"
    pub.publish("ok.x", b"")
    pub.publish("ok.x", b"")
    with pytest.raises(BusError) as fast:
        for _ in range(1000):  # the bucket holds one second's worth: 2
            pub.publish("ok.x", b"")
    assert fast.value.kind == "rate-limited"


async def test_unsubscribe_and_unknown_id() -> None:
    bus = Bus()
    ep = endpoint(bus, "ep")
    sub = ep.subscribe("a")
    assert bus.publish(None, "a", b"") == 1
    ep.unsubscribe(sub)
    assert bus.publish(None, "a", b"") == 0
    with pytest.raises(BusError) as e:
        ep.unsubscribe(sub)
    assert e.value.kind == "not-found"


async def test_slow_tap_drops_oldest_and_never_refuses() -> None:
    bus = Bus()
    tap = Tap(bus, ">", capacity=3)
    for n in range(10):
        bus.publish(None, "x", bytes([n]))
    assert tap.dropped == 7
    assert [(await tap.receive()).payload for _ in range(3)] == [b"\x07", b"\x08", b"\x09"]


async def test_two_plugins_relay_in_order(
        kernel: Kernel, components: dict[str, Component]) -> None:
    first = Grants(publish=("chain.>",), subscribe=("chain",))
    second = Grants(publish=("chain.>",), subscribe=("chain.r",))
    await running(kernel, spec(components, "relay", "first", config="chain", grants=first))
    await running(kernel, spec(components, "relay", "second", config="chain.r", grants=second))
    tap = Tap(kernel.bus, "chain.r.r")
    for n in range(200):
        kernel.publish("chain", n.to_bytes(2, "big"))
    got = [int.from_bytes((await tap.receive()).payload, "big") for _ in range(200)]
    assert got == list(range(200))


async def test_plugin_publish_to_a_full_mailbox_gets_an_error_value(
        kernel: Kernel, components: dict[str, Component], expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.refused_message")
    # `second` is never started, so its mailbox fills; `first` keeps running and
    # gets `rate-limited` back from publish, which it returns as err.
    bell = Doorbell(trio.lowlevel.current_trio_token(), threading.get_ident())
    stuck = kernel.bus.attach("stuck", None, Limits(mailbox=1), bell)
    stuck.subscribe("chain.r")
    sup = await running(kernel, spec(components, "relay", "first", config="chain",
                                     grants=Grants(publish=("chain.>",), subscribe=("chain",))))
    tap = Tap(kernel.bus, "chain.r")
    kernel.publish("chain", b"1")
    kernel.publish("chain", b"2")
    kernel.publish("chain", b"3")
    assert (await tap.receive()).payload == b"1"
    # messages 2 and 3 reach `first`, whose publish is refused: wait for both
    await sup.wait_for(lambda s: s.errors >= 2)
    assert "mailbox of stuck is full" in (sup.last_error or "")
    assert sup.crashes == 0


async def test_busy_plugin_mailbox_fills_and_publishers_are_refused(
        kernel: Kernel, components: dict[str, Component], expect_logs: ExpectedLogs) -> None:
    from testkit import FAST_RESTART

    expect_logs.allow("plugin.crashed")
    limits = FAST_RESTART.replace(mailbox=2, call_timeout_ms=2000)
    bad = await running(kernel, spec(components, "hostile",
                                     grants=Grants(subscribe=("hostile.>",)), limits=limits))
    kernel.publish("hostile.loop", b"")  # the plugin is now stuck until its deadline
    accepted = 1
    with pytest.raises(BusError) as refused:
        for _ in range(3):  # at most two more fit: the mailbox holds 2
            kernel.publish("hostile.ok", b"")
            accepted += 1
    assert refused.value.kind == "rate-limited"
    assert "mailbox of hostile is full (2 messages)" in refused.value.message
    assert accepted in (2, 3)
    assert bad.endpoint.mailbox.stats.refused == 1
    await bad.wait_for(lambda s: s.crashes == 1 and s.state is State.RUNNING
                       and s.endpoint.depth() == 0)
    assert kernel.publish("hostile.ok", b"") == 1  # the restart drained it: room again
