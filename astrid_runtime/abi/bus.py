"""`astrid:kernel/bus`: subscribe, unsubscribe, publish, checked against grants.

Errors: `invalid` (bad topic/pattern), `denied` (not granted), `too-large`
(payload over the plugin's limit), `rate-limited` (over the plugin's own
publish rate; a subscriber's full mailbox is that subscriber's loss, not
the publisher's error), `not-found` (unknown subscription id).

`current-sender` names who published the message being delivered, as the kernel
saw it (`record sender { plugin, kernel }`): the bus stamps it on every
message, so a plugin cannot claim another's name, and a bridged message
names its kernel by the ed25519 key that signed it. Outside `on-message`
it is `none`.
"""

from __future__ import annotations

from wasmtime.component import LinkerInstance

from astrid_runtime.abi.canon import BYTES, ERROR, STRING, U64, OptionCodec, ResultCodec
from astrid_runtime.abi.context import PluginContext
from astrid_runtime.abi.hostfunc import HostFuncs, Signature
from astrid_runtime.abi.outcome import call
from astrid_runtime.abi.resource import RecordCodec

INTERFACE = "astrid:kernel/bus@0.1.0"

SUBSCRIBE = Signature((STRING,), ResultCodec(U64, ERROR))
UNSUBSCRIBE = Signature((U64,), ResultCodec(None, ERROR))
PUBLISH = Signature((STRING, BYTES), ResultCodec(None, ERROR))
#: `record sender { plugin: string, kernel: option<string> }`
SENDER = RecordCodec((("plugin", STRING), ("kernel", OptionCodec(STRING))))
#: `current-sender: func() -> result<option<sender>, error>`
SENDER_OF = Signature((), ResultCodec(OptionCodec(SENDER), ERROR))


def define(funcs: HostFuncs, inst: LinkerInstance, ctx: PluginContext) -> None:
    endpoint = ctx.endpoint

    def subscribe(pattern: str) -> object:
        return call(lambda: endpoint.subscribe(pattern))

    def unsubscribe(sub_id: int) -> object:
        return call(lambda: endpoint.unsubscribe(sub_id))

    def publish(topic: str, payload: bytes) -> object:
        def run() -> None:
            endpoint.publish(topic, payload)

        return call(run)

    funcs.add(inst, "subscribe", SUBSCRIBE, subscribe)
    funcs.add(inst, "unsubscribe", UNSUBSCRIBE, unsubscribe)
    def sender() -> object:
        who = ctx.current_sender
        return call(lambda: None if who is None else (who.plugin, who.kernel))

    funcs.add(inst, "publish", PUBLISH, publish)
    funcs.add(inst, "current-sender", SENDER_OF, sender)
