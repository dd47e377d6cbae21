"""Two kernels joined through a real nats-server: a plugin on one answers a
client publish made on the other, in order, with no echo loop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
from testkit import MemoryKv, running, spec
from wasmtime.component import Component

from astrid_runtime.bus import Tap
from astrid_runtime.bus.nats import open_nats_bridge
from astrid_runtime.engine import KernelEngine
from astrid_runtime.grants import Grants
from astrid_runtime.kernel import open_kernel
from tests.fixtures.nats_server import NatsServer, running_nats_server


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    with running_nats_server() as server:
        yield server


async def test_plugin_on_one_kernel_serves_a_client_on_another(
        nats: NatsServer, engine: KernelEngine, components: dict[str, Component]) -> None:
    relay = Grants(publish=("demo.>",), subscribe=("demo",))
    async with (open_kernel(engine, MemoryKv()) as laptop,
                open_kernel(engine, MemoryKv()) as server,
                open_nats_bridge(nats.url) as laptop_bridge,
                open_nats_bridge(nats.url) as server_bridge,
                trio.open_nursery() as nursery):
        await running(server, spec(components, "relay", config="demo", grants=relay))
        await nursery.start(_bridge, laptop, laptop_bridge)
        await nursery.start(_bridge, server, server_bridge)
        replies = Tap(laptop.bus, "demo.r")
        for n in range(50):
            laptop.publish("demo", n.to_bytes(1, "big"))
        got = [await replies.receive() for _ in range(50)]
        assert [m.payload[0] for m in got] == list(range(50))
        assert got[0].publisher.startswith("nats:")
        # the laptop's own "demo" publishes did not come back to it from NATS
        assert laptop.bridge_stats["in"] == 50
        nursery.cancel_scope.cancel()


async def _bridge(kernel: object, bridge: object, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    from astrid_runtime.bus.nats import NatsBridge
    from astrid_runtime.kernel import Kernel

    assert isinstance(kernel, Kernel) and isinstance(bridge, NatsBridge)
    await bridge.subscribe(">")  # interest is registered before we report started
    task_status.started()
    await kernel.bridge(bridge)
