"""A small HTTP/1.1 server on trio, with h11 doing the protocol (sans-I/O).

What it knows: one request per connection turn, bodies up to `MAX_BODY`,
responses either whole (`Response.body`) or streamed (`Response.stream`, an
async iterator of chunks, for server-sent events). What it does not: TLS,
HTTP/2, pipelining beyond h11's own, chunked uploads over `MAX_BODY`. It is
meant for 127.0.0.1 and a browser, not the internet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import h11
import trio

#: A form or JSON answer is tiny; anything bigger is not ours.
MAX_BODY = 64 * 1024
#: h11's default buffer cap for the request head is 16 KiB; keep it.
READ_CHUNK = 16 * 1024
#: A client that sends nothing for this long loses its connection.
IDLE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Request:
    method: str
    #: The path with its query string, as sent (`/api/diff?session=a`).
    target: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    #: When set, streamed after the head instead of `body` (the connection then closes).
    stream: Callable[[], AsyncIterator[bytes]] | None = field(default=None, compare=False)


Handler = Callable[[Request], Awaitable[Response]]

#: Every response: no caching, no framing by other sites, no sniffing.
SECURITY_HEADERS = (("Cache-Control", "no-store"), ("X-Frame-Options", "DENY"),
                    ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.fail_after(IDLE_TIMEOUT_S):
            data = await stream.receive_some(READ_CHUNK)
        conn.receive_data(data)


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> Request | None:
    event = await _next_event(stream, conn)
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        raise h11.RemoteProtocolError("expected a request", error_status_hint=400)
    body = bytearray()
    while True:
        part = await _next_event(stream, conn)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError("body too large", error_status_hint=413)
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            raise h11.RemoteProtocolError("unexpected event", error_status_hint=400)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
    return Request(event.method.decode("ascii"), event.target.decode("latin-1"), headers,
                   bytes(body))


async def _send(stream: trio.SocketStream, conn: h11.Connection, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _respond(stream: trio.SocketStream, conn: h11.Connection,
                   response: Response) -> None:
    headers = [("Content-Type", response.content_type), *SECURITY_HEADERS,
               *response.headers]
    if response.stream is None:
        headers.append(("Content-Length", str(len(response.body))))
        await _send(stream, conn, h11.Response(status_code=response.status, headers=headers))
        await _send(stream, conn, h11.Data(data=response.body))
        await _send(stream, conn, h11.EndOfMessage())
        return
    headers.append(("Connection", "close"))
    await _send(stream, conn, h11.Response(status_code=response.status, headers=headers))
    async for chunk in response.stream():
        await _send(stream, conn, h11.Data(data=chunk))
    await _send(stream, conn, h11.EndOfMessage())


async def _serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            try:
                request = await _read_request(stream, conn)
            except h11.RemoteProtocolError as e:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _respond(stream, conn, Response(e.error_status_hint, b"bad request"))
                return
            if request is None:
                return
            await _respond(stream, conn, await handler(request))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
            h11.LocalProtocolError):
        return  # the browser went away mid-answer, or idled out
    finally:
        await stream.aclose()


async def serve(handler: Handler, host: str, port: int, *,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on host:port (0: any free port) and serve `handler` until cancelled;
    `task_status.started` with the port bound."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]

    async def one(stream: trio.SocketStream) -> None:
        await _serve_connection(stream, handler)

    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await nursery.start(trio.serve_listeners, one, listeners)


__all__ = ["MAX_BODY", "Handler", "Request", "Response", "serve"]
