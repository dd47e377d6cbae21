"""The half of the NATS bridge that runs in its own thread, in its own asyncio loop.

nats-py is asyncio-only; `NatsBridge` (bridge.py, the trio half) starts this
thread and talks to it only through the outbox and inbox deques and the
completions below (see bridge.py's docstring for the order and the limits).
This half connects, drains the outbox in order into nats-py, taps
subscriptions in arrival order, and judges each inbound message by the wire
rules (wire.py) before it reaches the inbox.

Order
-----
One FIFO outbox carries publishes AND control operations (subscribe,
unsubscribe, flush, stop), and one asyncio task drains it in order into
nats-py's write buffer, so nothing overtakes a queued publish: a flush is a
PING queued behind the publishes, a stop sends them all first. (nats-py's own
``flush()`` writes its PING ahead of its pending buffer; ``ordered_flush``
pushes that buffer out first.) NATS keeps a
publisher's order per connection. Inbound, nats-py would run one task per
subscription (two overlapping patterns could then reorder one publisher's
messages); instead each subscription's pending queue is replaced by a tap
that hands messages on in the connection's arrival order (this uses
nats-py's ``Subscription._pending_queue``; ``nats-py>=2.6,<3``, checked by
the tests). A message matching several of our patterns arrives once per
pattern; only the copy for the lowest matching pattern is delivered, so each
message reaches trio exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Final

import nats
import trio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from astrid_runtime.bus.nats import wire
from astrid_runtime.bus.nats.handoff import FLUSH, PUB, STOP, SUB, UNSUB, Completion
from astrid_runtime.bus.nats.values import (
    REMOTE_ORIGIN_PREFIX,
    BridgedMessage,
    BridgeError,
    BridgeInvalid,
    BridgeUnavailable,
)
from astrid_runtime.bus.router import Sender
from astrid_runtime.bus.topics import match_tokens

log = logging.getLogger("astrid_runtime.bus.nats.bridge")

# Seconds to wait for the asyncio thread to finish on shutdown before leaving it
# (it is a daemon thread): connect_timeout plus a final flush round trip.
STOP_GRACE: Final = 5.0
# Outbox items handed to nats-py between yields to its reader/flusher tasks.
_OUTBOX_BATCH: Final = 256

class OrderedTap(asyncio.Queue[Msg]):
    """Stands in for a nats-py subscription's pending queue.

    nats-py's reader calls ``put_nowait`` for each message in the order they
    arrive on the connection; passing them straight on keeps that order across
    subscriptions (a per-subscription task would not).
    """

    def __init__(self, deliver: Callable[[str, Msg], None], pattern: str) -> None:
        super().__init__()
        self._deliver = deliver
        self._pattern = pattern

    def put_nowait(self, item: Msg) -> None:
        self._deliver(self._pattern, item)



class AsyncioSide:
    """The asyncio thread's methods of `NatsBridge` (a mixin: the state is the bridge's,
    set up in its `__init__`; the asyncio thread alone touches `_subs`, the
    patterns and the replay guard)."""

    _servers: list[str]
    _name: str
    _prefix: str
    _origin_prefix: str
    _reconnect_wait: float
    _connect_timeout: float
    _pending_bytes: int
    _auth_token: str | None
    _peers: tuple[wire.Peer, ...] | None
    _replay_guard: wire.ReplayGuard
    _token: trio.lowlevel.TrioToken | None
    _stopping: bool
    _aloop: asyncio.AbstractEventLoop | None
    _outbox: deque[tuple[Any, ...]]
    _outbox_waiting: bool
    _outbox_event: asyncio.Event | None
    _inbox: deque[BridgedMessage]
    _inbox_waiting: bool
    _inbound_capacity: int
    _subs: dict[str, tuple[int, Subscription]]
    _active_patterns: tuple[str, ...]
    _canonical: dict[str, str | None]
    _connected: bool
    _max_payload: int
    _published: int
    _received: int
    _dropped_outbound: int
    _dropped_inbound: int
    _echoes: int
    _reconnects: int
    _rejected: int
    _last_rejection: str | None
    _last_error: str | None
    _outage_warned: bool

    def _set_connected(self, connected: bool) -> None:
        raise NotImplementedError

    def _post_state(self, connected: bool) -> None:
        """From the asyncio thread: tell trio the connection state changed."""
        if self._token is not None:
            with suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._set_connected, connected)

    def _wake_inbox(self) -> None:
        raise NotImplementedError

    def _thread_main(self, ready: Completion, exited: Completion) -> None:
        error: BaseException | None = None
        try:
            asyncio.run(self._amain(ready))
        except BaseException as exc:  # never let the thread die silently
            log.exception("NATS bridge thread failed")
            self._last_error = repr(exc)
            error = BridgeUnavailable(f"NATS bridge thread failed: {exc!r}")
            ready.complete(error)
        self._connected = False
        self._post_state(False)
        exited.complete(error)

    async def _amain(self, ready: Completion) -> None:
        self._aloop = asyncio.get_running_loop()
        self._outbox_event = asyncio.Event()
        try:
            nc = await nats.connect(
                self._servers,
                name=self._name,
                no_echo=True,
                allow_reconnect=True,
                # Fail the start after two tries per server (nats-py retries a
                # first connect forever when this is -1); reconnect forever later.
                max_reconnect_attempts=1,
                reconnect_time_wait=self._reconnect_wait,
                connect_timeout=self._connect_timeout,
                pending_size=self._pending_bytes,
                token=self._auth_token,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                error_cb=self._on_error,
                closed_cb=self._on_closed,
            )
        except Exception as exc:
            self._last_error = repr(exc)
            ready.complete(
                BridgeUnavailable(
                    f"cannot reach NATS at {', '.join(self._servers)}: {exc or type(exc).__name__}"
                )
            )
            return
        nc.options["max_reconnect_attempts"] = -1
        self._max_payload = nc.max_payload
        self._connected = True
        self._post_state(True)
        ready.complete()
        try:
            await self._drain_outbox(nc)
        finally:
            await self._close(nc)

    async def _close(self, nc: NatsClient) -> None:
        try:
            if nc.is_connected:
                await ordered_flush(nc)
        except Exception as exc:
            log.warning("NATS bridge: final flush failed: %s", exc)
        try:
            await nc.close()
        except Exception as exc:
            log.warning("NATS bridge: close failed: %s", exc)

    async def _drain_outbox(self, nc: NatsClient) -> None:
        outbox = self._outbox
        event = self._outbox_event
        assert event is not None
        while True:
            handled = 0
            while outbox:
                item = outbox.popleft()
                kind = item[0]
                if kind == PUB:
                    await self._publish_one(nc, item[1], item[2], item[3])
                elif kind == STOP:
                    return
                else:
                    await self._control_one(nc, kind, item[1], item[2])
                handled += 1
                if handled % _OUTBOX_BATCH == 0:
                    await asyncio.sleep(0)  # let nats-py's flusher and reader run
            event.clear()
            self._outbox_waiting = True
            if outbox:
                self._outbox_waiting = False
                continue
            await event.wait()

    async def _publish_one(
        self, nc: NatsClient, subject: str, payload: bytes, headers: dict[str, str]
    ) -> None:
        try:
            await nc.publish(subject, payload, headers=headers)
        except Exception as exc:  # nats.errors.Error, or OSError mid-reconnect
            self._dropped_outbound += 1
            self._last_error = f"publish {subject}: {exc!r}"
            if not self._outage_warned:
                self._outage_warned = True
                log.warning("NATS bridge dropping outbound messages: %s", exc or repr(exc))
        else:
            self._published += 1

    async def _control_one(
        self, nc: NatsClient, kind: int, pattern: str | None, done: Completion
    ) -> None:
        try:
            if kind == SUB:
                assert pattern is not None
                await self._add_sub(nc, pattern)
                await ordered_flush(nc)
            elif kind == UNSUB:
                assert pattern is not None
                await self._drop_sub(pattern)
                await ordered_flush(nc)
            elif kind == FLUSH:
                await ordered_flush(nc)
        except BridgeError as exc:
            done.complete(exc)
        except Exception as exc:  # nats.errors.Error, TimeoutError, mid-reconnect states
            self._last_error = repr(exc)
            done.complete(BridgeUnavailable(f"NATS: {exc or type(exc).__name__}"))
        else:
            done.complete()

    async def _add_sub(self, nc: NatsClient, pattern: str) -> None:
        count, sub = self._subs.get(pattern, (0, None))
        if sub is None:
            # No callback: nats-py starts no task and queues into
            # _pending_queue, which the tap replaces before any message can
            # arrive (the SUB is not even written until this task yields).
            # pending_bytes_limit=0: the tap never drains nats-py's
            # slow-consumer byte count; our inbox is the bound.
            sub = await nc.subscribe(self._prefix + pattern, pending_bytes_limit=0)
            if not isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue):
                await sub.unsubscribe()
                raise BridgeError("this nats-py version has no Subscription._pending_queue")
            sub._pending_queue = OrderedTap(self._deliver, pattern)
        self._subs[pattern] = (count + 1, sub)
        self._patterns_changed()

    async def _drop_sub(self, pattern: str) -> None:
        count, sub = self._subs.get(pattern, (0, None))
        if sub is None:
            raise BridgeInvalid(f"not subscribed to {pattern!r}")
        if count > 1:
            self._subs[pattern] = (count - 1, sub)
            return
        del self._subs[pattern]
        self._patterns_changed()
        await sub.unsubscribe()

    def _patterns_changed(self) -> None:
        self._active_patterns = tuple(sorted(self._subs))
        self._canonical = {}

    def _canonical_pattern(self, topic: str) -> str | None:
        found = self._canonical.get(topic, "")
        if found != "":
            return found
        tokens = topic.split(".")
        match = next((p for p in self._active_patterns if match_tokens(p.split("."), tokens)),
                     None)
        if len(self._canonical) > 10_000:
            self._canonical = {}
        self._canonical[topic] = match
        return match

    def _deliver(self, pattern: str, msg: Msg) -> None:
        """Called by nats-py's reader for each message, in arrival order."""
        topic = msg.subject[len(self._prefix) :]
        if len(self._active_patterns) > 1 and self._canonical_pattern(topic) != pattern:
            return  # another of our subscriptions delivers this message
        headers = msg.headers or {}
        sender = headers.get(wire.HEADER_ORIGIN)
        if sender is not None and sender.startswith(self._origin_prefix):
            self._echoes += 1
            return
        verified: Sender | None = None
        if self._peers is not None:
            verdict = wire.admit(topic, wire.origin_plugin(sender), msg.data,
                                 headers.get(wire.HEADER_SIG), self._peers,
                                 int(time.time() * 1000), self._replay_guard)
            if isinstance(verdict, wire.Rejected):
                self._reject(topic, verdict.reason)
                return
            verified = verdict
        if len(self._inbox) >= self._inbound_capacity:
            self._dropped_inbound += 1
            return
        origin = REMOTE_ORIGIN_PREFIX + (sender if sender is not None else "external")
        self._received += 1
        self._inbox.append(BridgedMessage(topic, msg.data, origin, verified))
        if self._inbox_waiting and self._token is not None:
            self._inbox_waiting = False
            with suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._wake_inbox)

    def _reject(self, topic: str, reason: str) -> None:
        self._rejected += 1
        self._last_rejection = f"{topic}: {reason}"
        if self._rejected == 1 or self._rejected % 1000 == 0:
            log.warning("NATS bridge: refused a message on %s: %s (%d refused so far)",
                        topic, reason, self._rejected)

    async def _on_disconnected(self) -> None:
        if self._stopping:
            return
        self._connected = False
        log.warning("NATS bridge: disconnected from %s; reconnecting", ", ".join(self._servers))
        self._post_state(False)

    async def _on_reconnected(self) -> None:
        self._reconnects += 1
        self._connected = True
        self._outage_warned = False
        log.info("NATS bridge: reconnected (%d reconnects so far)", self._reconnects)
        self._post_state(True)

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = repr(exc)
        log.debug("NATS bridge: %r", exc)

    async def _on_closed(self) -> None:
        self._connected = False
        self._post_state(False)


async def ordered_flush(nc: NatsClient) -> None:
    """Return once the server has processed every command given to ``nc`` so far.

    nats-py's ``flush()`` writes its PING straight to the socket, ahead of
    commands still in its pending buffer: a PONG could then come back before
    a queued SUB or PUB reached the server (seen here: a subscribe that
    returned before the server had the interest). So push the pending buffer
    out first (``_flush_pending(force_flush=True)`` returns once the flusher
    wrote it), then PING.
    """
    await nc._flush_pending(force_flush=True)
    await nc.flush(timeout=int(STOP_GRACE))
