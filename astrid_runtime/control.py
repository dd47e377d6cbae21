"""The control socket: `astrid` talks to `astridd` over a Unix stream socket.

Protocol: JSON lines. The client sends one request object with an `op`;
the server answers with one object carrying `ok` (and `error`, `kind` when
not ok), except `tail`, which after its first answer streams one object per
message until the client hangs up. Payloads travel base64-encoded.

    {"op": "status"}                          -> {"ok": true, "status": {...}}
    {"op": "publish", "topic": T, "payload": B64}
                                              -> {"ok": true, "delivered": N}
    {"op": "tail", "pattern": P}              -> {"ok": true}, then
          {"topic": T, "payload": B64, "publisher": NAME} ... and {"gap": N}
          when the tail fell behind and N messages were dropped for it.
    {"op": "approvals"}                       -> {"ok": true, "pending": [ASK...],
                                                  "standing": [GRANT...]}
    {"op": "answer", "id": ASK, "answer": once|session|always|deny, "reason": R}
                                              -> {"ok": true, "ask": ASK}
    {"op": "revoke", "id": GRANT}             -> {"ok": true, "revoked": GRANT}

Errors carry `kind` (`not-found` for an ask already answered or expired,
`unavailable` for a kernel without approvals).

The socket file is created mode 0600 (the kernel's authority is the user's).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import socket as pysocket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from astrid_runtime.bus import Tap
from astrid_runtime.errors import ControlError, KernelUnreachable, Refusal
from astrid_runtime.kernel import Kernel

if TYPE_CHECKING:
    from astrid_runtime.approval.service import Approvals

#: Largest request line: a 1 MiB payload in base64 plus the envelope.
MAX_REQUEST_BYTES = 2 * 1024 * 1024


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes | None:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return bytes(buf) if buf else None
        buf += chunk
        if len(buf) > MAX_REQUEST_BYTES:
            raise ControlError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    return bytes(buf[: buf.index(b"\n")])


class ControlServer:
    """Serves one kernel's control socket."""

    def __init__(self, kernel: Kernel, path: Path, approvals: Approvals | None = None):
        self.kernel = kernel
        self.path = path
        self.approvals = approvals

    async def _bind(self) -> trio.socket.SocketType:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # stale socket of a kernel that died
            else:
                raise ControlError(f"{self.path}: another astridd is already listening")
            finally:
                probe.close()
        sock = trio.socket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            await sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(64)
        return sock

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen until cancelled; removes the socket file on the way out."""
        sock = await self._bind()
        listener = trio.SocketListener(sock)
        try:
            task_status.started()
            await trio.serve_listeners(self._handle, [listener])
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                line = await _read_line(stream)
                if line is None:
                    return
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ControlError("request must be a JSON object")
                op = request.get("op")
                if op == "tail":
                    await self._tail(stream, request)
                    return
                extra = self.kernel.control_ops.get(op) if isinstance(op, str) else None
                reply = await extra(request) if extra else self._dispatch(op, request)
            except (ValueError, ControlError) as e:
                reply = {"ok": False, "kind": "invalid", "error": str(e)}
            except Refusal as e:
                reply = {"ok": False, "kind": e.kind, "error": e.message}
            except trio.BrokenResourceError:
                return
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(_encode(reply))

    def _dispatch(self, op: object, request: dict[str, Any]) -> dict[str, Any]:
        if op == "status":
            return {"ok": True, "status": self.kernel.status()}
        if op == "publish":
            topic = request.get("topic")
            if not isinstance(topic, str):
                raise ControlError("publish needs a string topic")
            try:
                payload = base64.b64decode(request.get("payload", ""), validate=True)
            except (binascii.Error, TypeError) as e:
                raise ControlError(f"payload is not base64: {e}") from None
            return {"ok": True, "delivered": self.kernel.publish(topic, payload)}
        if op in ("approvals", "answer", "revoke"):
            return self._approvals(op, request)
        raise ControlError(f"unknown op {op!r} (known: status, publish, tail, approvals, "
                           "answer, revoke)")

    def _approvals(self, op: object, request: dict[str, Any]) -> dict[str, Any]:
        approvals = self.approvals
        if approvals is None:
            raise Refusal("unavailable", "this kernel has no approval pipeline")
        if op == "approvals":
            return {"ok": True, **approvals.listing()}
        ident = request.get("id")
        if not isinstance(ident, str):
            raise ControlError(f"{op} needs a string id")
        if op == "revoke":
            return {"ok": True, "revoked": approvals.revoke(ident).to_json()}
        decision, reason = request.get("answer"), request.get("reason", "")
        if not isinstance(decision, str) or not isinstance(reason, str):
            raise ControlError("answer needs a string answer (and reason)")
        ask = approvals.answer(ident, decision, reason, "cli")
        return {"ok": True, "ask": ask.to_json(), "answer": decision}

    async def _tail(self, stream: trio.SocketStream, request: dict[str, Any]) -> None:
        pattern = request.get("pattern")
        if not isinstance(pattern, str):
            raise ControlError("tail needs a string pattern")
        tap = Tap(self.kernel.bus, pattern)
        try:
            await stream.send_all(_encode({"ok": True}))
            reported = 0

            async def watch_hangup() -> None:
                # The client never sends after its request: EOF means it left.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while await stream.receive_some(1024):
                        pass
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_hangup)
                while True:
                    message = await tap.receive()
                    if tap.dropped > reported:
                        await stream.send_all(_encode({"gap": tap.dropped - reported}))
                        reported = tap.dropped
                    await stream.send_all(_encode({
                        "topic": message.topic,
                        "payload": base64.b64encode(message.payload).decode(),
                        "publisher": message.publisher,
                    }))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            tap.close()


class ControlClient:
    """Blocking client for the control socket (used by `astrid`)."""

    def __init__(self, path: Path, timeout: float | None = 30.0):
        self.path = path
        self.timeout = timeout

    def _connect(self) -> pysocket.socket:
        sock = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise KernelUnreachable(f"astridd is not running (no kernel at {self.path})") from None
        except OSError as e:
            sock.close()
            raise ControlError(f"{self.path}: {e.strerror}") from None
        return sock

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """One request, one reply; raises `ControlError` when not ok."""
        with self._connect() as sock:
            sock.sendall(_encode(message))
            reply = _decode(_recv_line(sock))
        return _checked(reply)

    def stream(self, message: dict[str, Any]) -> Any:
        """Send `message`; yield the checked first reply, then each following object."""
        sock = self._connect()
        sock.settimeout(None)
        with sock:
            sock.sendall(_encode(message))
            reader = sock.makefile("rb")
            yield _checked(_decode(reader.readline()))
            for line in reader:
                yield _decode(line)


def _recv_line(sock: pysocket.socket) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _decode(line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(f"bad reply from astridd: {line[:80]!r}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"bad reply from astridd: {line[:80]!r}")
    return reply


def _checked(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "request failed")))
    return reply
