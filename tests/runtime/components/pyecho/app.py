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


def _b(text: str) -> bytes:
    """Fuzz payloads travel as latin-1 text in JSON: any byte value round-trips."""
    return text.encode("latin-1")


def _file_op(f: "vfs.File", op: list) -> object:
    name, args = op[0], op[1:]
    if name == "read":
        return len(f.read(args[0]))
    if name == "write":
        return f.write(_b(args[0]))
    if name == "seek":
        return f.seek(args[0], vfs.SeekFrom(args[1]))
    return f.stat().size


def _vfs_call(call: dict) -> object:
    with vfs.root(call["root"]) as root:
        op, args = call["op"], call["args"]
        if op == "open_file":
            with root.open_file(args[0], vfs.OpenFlags(args[1])) as f:
                return _file_op(f, call["file_op"])
        if op == "open_dir":
            with root.open_dir(args[0]) as d:
                return len(d.list(""))
        if op == "rename":
            return root.rename(args[0], args[1])
        return getattr(root, op)(args[0])


def _fuzz_call(call: dict) -> object:
    """One host call from a fuzz batch (test_host_fuzz.py); raises Err when refused."""
    fn, a = call["fn"], call.get("args", [])
    if fn == "log.write":
        return log.write(log.Level(a[0]), a[1], [tuple(p) for p in a[2]])
    if fn == "bus.subscribe":
        return bus.subscribe(a[0])
    if fn == "bus.unsubscribe":
        return bus.unsubscribe(a[0])
    if fn == "bus.publish":
        return bus.publish(a[0], _b(a[1]))
    if fn == "bus.current_sender":
        return bus.current_sender() is not None
    if fn == "kv.get":
        got = kv.get(a[0])
        return None if got is None else len(got)
    if fn == "kv.set":
        return kv.set(a[0], _b(a[1]))
    if fn == "kv.delete":
        return kv.delete(a[0])
    if fn == "kv.list":
        return len(kv.list(a[0]))
    if fn == "cap.request":
        return cap.request(cap.Action(a[0], a[1], [tuple(p) for p in a[2]])).kind
    if fn == "vfs":
        return _vfs_call(call)
    raise ValueError(fn)


def _fuzz(payload: bytes) -> bytes:
    outcomes = []
    for call in json.loads(payload):
        try:
            _fuzz_call(call)
            outcomes.append("ok")
        except Err as e:
            outcomes.append(type(e.value).__name__)
    bus.subscribe("echo.>")  # a random unsubscribe may have hit our own subscription
    return json.dumps(outcomes).encode()


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
        elif topic == "echo.fuzz":  # test_host_fuzz.py: a batch of random host calls
            bus.publish("echo.fuzz.out", _fuzz(payload))
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
