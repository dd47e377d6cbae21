"""Test plugin: echoes `echo.in` messages to `echo.out`, keeps a counter in kv.

Config strings drive it: "subscribe=PATTERN" subscribes; anything else uses
the default pattern `echo.in`. Messages on `echo.kv` store the payload under
the key `last` and publish what kv then returns on `echo.kv.out`.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import bus, kv, log
from wit_world.imports.types import Error


def _describe(e: Err) -> str:
    value = e.value
    return f"{type(value).__name__}:{getattr(value, 'value', '')}"


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        pattern = "echo.>"
        if config.startswith("subscribe="):
            pattern = config.removeprefix("subscribe=")
        bus.subscribe(pattern)
        log.write(log.Level.INFO, "pyecho ready", [("pattern", pattern)])

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic == "echo.in":
            bus.publish("echo.out", payload)
        elif topic == "echo.kv":
            kv.set("last", payload)
            got = kv.get("last")
            bus.publish("echo.kv.out", got if got is not None else b"<none>")
        elif topic == "echo.denied":
            try:
                bus.publish("forbidden.topic", payload)
            except Err as e:
                bus.publish("echo.error", _describe(e).encode())
        elif topic == "echo.fail":
            raise Err("asked to fail")
        _ = Error
