"""Test plugin: echoes `echo.in` to `echo.out`, and more, by topic.

init(config): "subscribe=PATTERN" subscribes to PATTERN, otherwise `echo.>`.
`echo.kv` stores the payload under `last` and publishes what kv returns on
`echo.kv.out` (and the key list on `echo.kv.keys`), or the error on
`echo.error`; `echo.cap` asks cap and vfs (root named by the payload) and
reports both errors on `echo.error`; `echo.denied` tries a topic it was not
granted and reports the error on `echo.error`; `echo.ask` (JSON `{"kind",
"resource", "hint", "details"}`) asks cap and publishes the token's resource on
`echo.ask.ok` or the error on `echo.ask.err`; as a frontend (config
`subscribe=approval.requested`) it answers each ask on `approval.answer`
with the ask's `hint` detail. `echo.fail` returns err. `echo.loop` and
`echo.hog` misbehave (spin forever, allocate without bound) for the
supervision tests. `echo.sender` publishes the kernel-stamped sender of the
message as JSON on `echo.sender.out`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import bus, cap, kv, log, vfs
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
            try:
                kv.set("last", payload)
                got = kv.get("last")
                keys = kv.list("")
                existed = kv.delete("nothing-here")
            except Err as e:
                bus.publish("echo.error", _describe(e).encode())
                return
            bus.publish("echo.kv.out", got if got is not None else b"<none>")
            bus.publish("echo.kv.keys", ",".join(keys).encode() + b"/" + str(existed).encode())
        elif topic == "echo.cap":
            try:
                cap.request(cap.Action("net.http", "https://example.org", [("why", "test")]))
            except Err as e:
                bus.publish("echo.error", _describe(e).encode())
            try:
                vfs.root(payload.decode())
            except Err as e:
                bus.publish("echo.error", _describe(e).encode())
        elif topic == "echo.ask":
            body = json.loads(payload)
            details = [("hint", body["hint"]), *sorted(body.get("details", {}).items())]
            action = cap.Action(body["kind"], body["resource"], details)
            try:
                token = cap.request(action)
            except Err as e:
                bus.publish("echo.ask.err", _describe(e).encode())
                return
            bus.publish("echo.ask.ok", token.resource.encode())
        elif topic == "approval.requested":
            ask = json.loads(payload)
            answer = {"id": ask["id"], "answer": ask["details"].get("hint", "deny"),
                      "reason": "the frontend said so"}
            bus.publish("approval.answer", json.dumps(answer).encode())
        elif topic == "echo.denied":
            try:
                bus.publish("forbidden.topic", payload)
            except Err as e:
                bus.publish("echo.error", _describe(e).encode())
        elif topic in ("echo.sender", "echo.sender.r"):  # who sent it, as the kernel saw
            who = bus.current_sender()
            body = None if who is None else {"plugin": who.plugin, "kernel": who.kernel}
            bus.publish("echo.sender.out", json.dumps(body).encode())
        elif topic == "echo.fail":
            raise Err("asked to fail")
        elif topic == "echo.loop":  # hostile: spin until the epoch deadline stops us
            while True:
                pass
        elif topic == "echo.hog":  # hostile: allocate until the store's memory limit
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        _ = Error
