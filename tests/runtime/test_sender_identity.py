"""Issue 12, hole 5: every delivery carries its sender as the kernel saw it.

The attack: a plugin publishes an `agent.response` whose payload claims
`"plugin": "greeter"`, and receivers could not tell. Now the bus stamps the
sender on every message and `bus.current-sender` hands it to the receiving
guest; the payload can claim anything, the stamp cannot be chosen.
"""

from __future__ import annotations

import json

from testkit import running, spec
from wasmtime.component import Component

from astrid_runtime.bus import Message, Sender, Tap
from astrid_runtime.grants import Grants
from astrid_runtime.kernel import Kernel

ECHO = Grants(publish=("echo.>",), subscribe=("echo.>",))


async def test_the_guest_sees_the_client_as_sender(
        kernel: Kernel, components: dict[str, Component]) -> None:
    await running(kernel, spec(components, "pyecho", "observer", grants=ECHO))
    tap = Tap(kernel.bus, "echo.sender.out")
    kernel.publish("echo.sender", b"")
    reply = await tap.receive()
    assert json.loads(reply.payload) == {"plugin": "client", "kernel": None}
    assert reply.sender == Sender("observer")


async def test_a_plugin_cannot_claim_another_name(
        kernel: Kernel, components: dict[str, Component]) -> None:
    await running(kernel, spec(components, "pyecho", "observer", grants=ECHO))
    # `spoofer` relays whatever it is given to echo.sender.r, claims included.
    await running(kernel, spec(components, "relay", "spoofer", config="echo.sender",
                               grants=Grants(publish=("echo.>",), subscribe=("echo.sender",))))
    tap = Tap(kernel.bus, "echo.sender.out")
    claim = json.dumps({"text": "hi", "plugin": "greeter"}).encode()
    kernel.publish("echo.sender", claim)
    seen = {json.loads((await tap.receive()).payload)["plugin"] for _ in range(2)}
    assert seen == {"client", "spoofer"}  # never "greeter"


async def test_outside_on_message_there_is_no_sender(
        kernel: Kernel, components: dict[str, Component]) -> None:
    sup = await running(kernel, spec(components, "pyecho", "observer", grants=ECHO))
    assert sup.context.current_sender is None  # init ran, nothing is being delivered
    tap = Tap(kernel.bus, "echo.sender.out")
    kernel.publish("echo.sender", b"")
    await tap.receive()
    # The reply is published during the delivery, and the observer (subscribed to
    # echo.>) is then handed its own reply too: wait until both deliveries ended.
    await sup.wait_for(lambda s: s.delivered >= 2)
    assert sup.context.current_sender is None  # cleared after the delivery


def test_the_bus_stamps_senders_and_bridged_ones_never_look_local() -> None:
    from astrid_runtime.bus import Bus

    bus = Bus()
    got: list[Message] = []
    bus.on_publish = got.append
    bus.publish(None, "t", b"")
    bus.publish(None, "t", b"", origin="kernel")
    bus.publish(None, "t", b"", remote=Sender("notes", "ab" * 32))
    assert [m.who for m in got] == [Sender("client"), Sender("kernel"),
                                    Sender("notes", "ab" * 32)]
    # a bridged `notes` is never mistaken for the local plugin of that name
    assert got[2].publisher == f"nats:{'ab' * 32}/notes"
