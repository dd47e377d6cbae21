"""`astrid:kernel/bus`: subscribe, unsubscribe, publish, checked against grants.

Errors: `invalid` (bad topic/pattern), `denied` (not granted), `too-large`
(payload over the plugin's limit), `rate-limited` (over the plugin's own
publish rate; a subscriber's full mailbox is that subscriber's loss, not
the publisher's error), `not-found` (unknown subscription id).
"""

from __future__ import annotations

from wasmtime.component import LinkerInstance

from astrid_runtime.abi.canon import BYTES, ERROR, STRING, U64, ResultCodec
from astrid_runtime.abi.context import PluginContext
from astrid_runtime.abi.hostfunc import HostFuncs, Signature
from astrid_runtime.abi.outcome import call

INTERFACE = "astrid:kernel/bus@0.1.0"

SUBSCRIBE = Signature((STRING,), ResultCodec(U64, ERROR))
UNSUBSCRIBE = Signature((U64,), ResultCodec(None, ERROR))
PUBLISH = Signature((STRING, BYTES), ResultCodec(None, ERROR))


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
    funcs.add(inst, "publish", PUBLISH, publish)
