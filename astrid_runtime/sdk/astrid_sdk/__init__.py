"""Astrid plugin SDK for Python (runs inside the plugin, built by componentize-py).

    from astrid_sdk import Message, Plugin, kv

    plugin = Plugin("greeter")

    @plugin.on("greet.>")
    def greet(msg: Message) -> None:
        kv.set("last", msg.text)
        plugin.respond(f"hello, {msg.text}")

    WitWorld = plugin.world()

`bus`, `kv` and `log` wrap the Host ABI imports of `astrid:kernel@0.1.0`:
a refused call raises `HostError(kind, reason)`; payloads and values may
be bytes, text, or JSON-able values. See docs/plugins.md.
"""

from astrid_sdk import bus, kv, log
from astrid_sdk._host import HostError
from astrid_sdk.bus import Sender, publish, subscribe, unsubscribe
from astrid_sdk.plugin import RESPONSE_TOPIC, Message, Plugin

__version__ = "0.1.0"

__all__ = [
    "RESPONSE_TOPIC",
    "HostError",
    "Message",
    "Plugin",
    "Sender",
    "bus",
    "kv",
    "log",
    "publish",
    "subscribe",
    "unsubscribe",
]
