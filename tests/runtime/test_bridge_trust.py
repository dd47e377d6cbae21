"""Issue 12, hole 6: the NATS bridge trusts no one it was not told to.

The attacks: a plain NATS client with no credentials published
`astrid.notes.add` and notes stored it; a forged `Astrid-Origin` header passed
as `nats:…/wordcount`; grants did not apply to bridged messages. Now the
server wants a token, every bridged message is signed by its kernel's ed25519
key, and a kernel believes only its peers, for the topics they may publish.
The wire rules are tested alone first, then against a real nats-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nats
import nats.errors
import pytest
import trio
from testkit import MemoryKv, running, spec
from wasmtime.component import Component

from astrid_runtime.bus import Sender, Tap
from astrid_runtime.bus.nats import NatsBridge, open_nats_bridge
from astrid_runtime.bus.nats.wire import (
    HEADER_SIG,
    MAX_SKEW_MS,
    Peer,
    Rejected,
    admit,
    sign,
)
from astrid_runtime.engine import KernelEngine
from astrid_runtime.grants import Grants
from astrid_runtime.identity import KernelIdentity
from astrid_runtime.kernel import Kernel, open_kernel
from tests.fixtures.nats_server import NatsServer, running_nats_server

TOKEN = "s3cret-test-token"
GUARD_S = 30  # a bound on a hung test, never a measurement
LAPTOP = KernelIdentity.from_secret(b"L" * 32)
SERVER = KernelIdentity.from_secret(b"S" * 32)
ROGUE = KernelIdentity.from_secret(b"R" * 32)
NOW = 1_800_000_000_000


# -- the wire rules, alone ---------------------------------------------------------

def _verdict(header: str | None, *, topic: str = "notes.add", plugin: str = "router",
             payload: bytes = b"milk", peers: tuple[Peer, ...] = (Peer(SERVER.kernel_id,
                                                                        ("notes.>",)),),
             now: int = NOW) -> Sender | Rejected:
    return admit(topic, plugin, payload, header, peers, now)


def test_a_peers_signed_message_is_believed_with_its_kernel() -> None:
    header = sign(SERVER, "notes.add", "router", b"milk", NOW)
    assert _verdict(header) == Sender("router", SERVER.kernel_id)


@pytest.mark.parametrize("attack, expected", [
    ("unsigned", "unsigned"),
    ("garbage", "malformed"),
    ("forged name", "does not verify"),        # Astrid-Origin says wordcount, signed router
    ("altered payload", "does not verify"),
    ("other topic", "does not verify"),
    ("not a peer", "is not a peer"),
    ("outside its grant", "may not publish"),
    ("stale", "s off"),
])
def test_the_attacks_are_refused(attack: str, expected: str) -> None:
    good = sign(SERVER, "notes.add", "router", b"milk", NOW)
    cases: dict[str, Sender | Rejected] = {
        "unsigned": _verdict(None),
        "garbage": _verdict("v1 zz 1 !!"),
        "forged name": _verdict(good, plugin="wordcount"),
        "altered payload": _verdict(good, payload=b"evil"),
        "other topic": _verdict(good, topic="notes.delete"),
        "not a peer": _verdict(sign(ROGUE, "notes.add", "router", b"milk", NOW)),
        "outside its grant": _verdict(sign(SERVER, "user.input", "router", b"x", NOW),
                                      topic="user.input", payload=b"x"),
        "stale": _verdict(good, now=NOW + MAX_SKEW_MS + 1),
    }
    verdict = cases[attack]
    assert isinstance(verdict, Rejected) and expected in verdict.reason


# -- against a real nats-server that wants a token ----------------------------------

@pytest.fixture(scope="module")
def nats_auth() -> Iterator[NatsServer]:
    with running_nats_server(token=TOKEN) as server:
        yield server


def _plain_client(url: str, token: str | None, subject: str, headers: dict[str, str]) -> None:
    """A plain nats-py client (no kernel): connect, publish once, flush, close."""
    async def go() -> None:
        nc = await nats.connect(url, token=token, allow_reconnect=False,
                                max_reconnect_attempts=0, connect_timeout=2)
        await nc.publish(subject, b"evil injected", headers=headers)
        await nc.flush()
        await nc.close()

    asyncio.run(go())


async def test_a_client_without_the_token_is_refused_by_the_server(
        nats_auth: NatsServer) -> None:
    with pytest.raises((nats.errors.Error, OSError)):
        await trio.to_thread.run_sync(_plain_client, nats_auth.url, None, "astrid.notes.add",
                                      {})


async def _bridge(kernel: Kernel, bridge: NatsBridge, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    await bridge.subscribe(">")
    task_status.started()
    await kernel.bridge(bridge)


async def test_only_signed_messages_from_peers_reach_the_bus(
        nats_auth: NatsServer, engine: KernelEngine, components: dict[str, Component]) -> None:
    relay = Grants(publish=("demo.>",), subscribe=("demo",))
    laptop_peers = (Peer(SERVER.kernel_id, ("demo.r",)),)
    server_peers = (Peer(LAPTOP.kernel_id, ("demo",)),)
    with trio.fail_after(GUARD_S):
        async with (open_kernel(engine, MemoryKv()) as laptop,
                    open_kernel(engine, MemoryKv()) as server,
                    open_nats_bridge(nats_auth.url, identity=LAPTOP, peers=laptop_peers,
                                     token=TOKEN) as laptop_bridge,
                    open_nats_bridge(nats_auth.url, identity=SERVER, peers=server_peers,
                                     token=TOKEN) as server_bridge,
                    trio.open_nursery() as nursery):
            await running(server, spec(components, "relay", config="demo", grants=relay))
            await nursery.start(_bridge, laptop, laptop_bridge)
            await nursery.start(_bridge, server, server_bridge)
            replies = Tap(laptop.bus, "demo.r")
            sneaked = Tap(laptop.bus, "notes.add")

            # A client holding the NATS token but no kernel key (a stolen credential)
            # forges the server kernel's origin header.
            forged = {"Astrid-Origin": f"{server_bridge.instance_id}/relay"}
            await trio.to_thread.run_sync(_plain_client, nats_auth.url, TOKEN,
                                          "astrid.notes.add", forged)
            # ... and replays a real signature on a topic it was not made for.
            stolen = {**forged, HEADER_SIG: sign(SERVER, "demo.r", "relay", b"x", NOW)}
            await trio.to_thread.run_sync(_plain_client, nats_auth.url, TOKEN,
                                          "astrid.demo.r", stolen)

            laptop.publish("demo", b"hello")  # the real round trip, after both
            reply = await replies.receive()
            assert reply.payload == b"hello"
            assert reply.sender == Sender("relay", SERVER.kernel_id)
            assert reply.publisher == f"nats:{SERVER.kernel_id}/relay"
            stats = laptop_bridge.stats
            assert stats.rejected == 2
            assert "does not verify" in (stats.last_rejection or "")
            assert sneaked.endpoint.depth() == 0 and replies.endpoint.depth() == 0
            nursery.cancel_scope.cancel()


async def test_a_peer_outside_its_publish_grant_is_refused(
        nats_auth: NatsServer) -> None:
    with trio.fail_after(GUARD_S):
        async with (open_nats_bridge(nats_auth.url, identity=LAPTOP,
                                     peers=(Peer(SERVER.kernel_id, ("demo.r",)),),
                                     token=TOKEN) as laptop,
                    open_nats_bridge(nats_auth.url, identity=SERVER, peers=(),
                                     token=TOKEN) as server):
            await laptop.subscribe(">")
            server.publish("user.input", b"note evil injected", "relay")  # not granted
            server.publish("demo.r", b"fine", "relay")
            got = await laptop.inbound.receive()
            assert (got.topic, got.sender) == ("demo.r", Sender("relay", SERVER.kernel_id))
            assert laptop.stats.rejected == 1
            assert "may not publish to 'user.input'" in (laptop.stats.last_rejection or "")
