"""The bus without WebAssembly: grants, limits, the full-mailbox policy (a slow
consumer hurts only itself),
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


async def test_a_full_mailbox_drops_only_for_its_owner() -> None:
    bus = Bus()
    fast = endpoint(bus, "fast", mailbox=10)
    slow = endpoint(bus, "slow", mailbox=2)
    pub = endpoint(bus, "pub", Grants(publish=("t",)))
    fast.subscribe("t")
    slow.subscribe("t")
    overflows: list[int] = []
    slow.mailbox.on_overflow = overflows.append
    assert [pub.publish("t", bytes([n])) for n in range(5)] == [2, 2, 1, 1, 1]
    assert drain(fast) == [bytes([n]) for n in range(5)]  # fast got everything
    assert drain(slow) == [b"\x00", b"\x01"]  # slow lost what it had no room for
    assert slow.mailbox.stats.overflowed == 3 and fast.mailbox.stats.overflowed == 0
    assert overflows == [1]  # its owner hears of the first drop of a burst
    assert pub.publish("t", b"again") == 2  # room again


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


async def test_a_stuck_subscriber_does_not_refuse_a_plugins_publish(
        kernel: Kernel, components: dict[str, Component]) -> None:
    # `stuck` never reads, so its mailbox fills; `first` keeps publishing and
    # nobody else notices: no error comes back to it.
    bell = Doorbell(trio.lowlevel.current_trio_token(), threading.get_ident())
    stuck = kernel.bus.attach("stuck", None, Limits(mailbox=1), bell)
    stuck.subscribe("chain.r")
    sup = await running(kernel, spec(components, "relay", "first", config="chain",
                                     grants=Grants(publish=("chain.>",), subscribe=("chain",))))
    tap = Tap(kernel.bus, "chain.r")
    for n in range(3):
        kernel.publish("chain", bytes([n]))
    assert [(await tap.receive()).payload for _ in range(3)] == [b"\x00", b"\x01", b"\x02"]
    assert sup.errors == 0 and sup.crashes == 0
    assert stuck.mailbox.stats.overflowed == 2


async def test_a_looping_snoop_on_everything_hurts_only_itself(
        kernel: Kernel, components: dict[str, Component], expect_logs: ExpectedLogs) -> None:
    """Issue 12, hole 4: `evil` subscribes to `>` and loops; it used to fill its mailbox
    and then refuse every publish on the bus (172 of 300 pings, and `user.input`)."""
    from testkit import FAST_RESTART

    expect_logs.allow("plugin.crashed", "plugin.mailbox_overflow")
    limits = FAST_RESTART.replace(mailbox=4, call_timeout_ms=1000)
    evil = await running(kernel, spec(components, "hostile", "evil", limits=limits,
                                      grants=Grants(subscribe=(">",))))
    evil.endpoint.subscribe(">")
    await running(kernel, spec(components, "relay", "pinger", config="ping",
                               grants=Grants(publish=("ping.>",), subscribe=("ping",)),
                               limits=Limits(mailbox=300)))
    tap = Tap(kernel.bus, "ping.r", capacity=1000)
    kernel.publish("hostile.loop", b"")  # evil is now stuck until its deadline
    delivered = [kernel.publish("ping", n.to_bytes(2, "big")) for n in range(300)]
    assert all(d >= 1 for d in delivered)  # never refused: pinger got every one
    got = [int.from_bytes((await tap.receive()).payload, "big") for _ in range(300)]
    assert got == list(range(300))
    assert kernel.publish("user.input", b"hello") == 0  # evil is full: dropped, not refused
    assert evil.endpoint.mailbox.stats.overflowed > 0
    assert evil.status()["overflowed"] == evil.endpoint.mailbox.stats.overflowed


async def test_busy_plugin_mailbox_fills_and_its_own_mail_is_dropped(
        kernel: Kernel, components: dict[str, Component], expect_logs: ExpectedLogs) -> None:
    from testkit import FAST_RESTART

    expect_logs.allow("plugin.crashed", "plugin.mailbox_overflow")
    limits = FAST_RESTART.replace(mailbox=2, call_timeout_ms=2000)
    bad = await running(kernel, spec(components, "hostile",
                                     grants=Grants(subscribe=("hostile.>",)), limits=limits))
    kernel.publish("hostile.loop", b"")  # the plugin is now stuck until its deadline
    taken = [kernel.publish("hostile.ok", b"") for _ in range(4)]
    # the mailbox holds 2, the loop message included until the plugin takes it
    assert taken[0] == 1 and taken[3] == 0 and sum(taken) in (1, 2)
    assert bad.endpoint.mailbox.stats.overflowed == 4 - sum(taken)
    await bad.wait_for(lambda s: s.crashes == 1 and s.state is State.RUNNING
                       and s.endpoint.depth() == 0)
    assert kernel.publish("hostile.ok", b"") == 1  # the restart drained it: room again
