"""The bus's optional bridge to NATS, so kernels on several machines share one bus.

nats-py is asyncio-only and the kernel is trio, so the bridge runs nats-py in
ONE dedicated thread with its own asyncio loop (the one asyncio loop DESIGN
allows), joined to trio by two ordered queues:

    trio ──publish()──▶ outbox (deque) ──▶ asyncio: nc.publish / subscribe / flush
    trio ◀──inbound──── inbox (deque)  ◀── asyncio: tapped subscriptions

Interface (trio side)
---------------------
``bridge = NatsBridge(servers, instance_id=..., subject_prefix="astrid.")``

* ``await nursery.start(bridge.run)`` — connects (raises ``BridgeUnavailable``
  if no server answers), then runs until cancelled; on the way out it hands
  every queued publish to the server before closing. ``open_nats_bridge(...)``
  wraps this as an async context manager.
* ``bridge.publish(topic, payload, origin) -> bool`` — non-blocking enqueue,
  callable from the trio thread (or any thread). Returns False, sending
  nothing, for a message whose ``origin`` says it came from NATS (loop
  prevention: see below). Raises ``BridgeInvalid`` (bad topic),
  ``BridgeTooLarge`` (over the server's max payload), ``BridgeFull`` (the
  outbox holds ``outbound_capacity`` messages) or ``BridgeUnavailable``
  (bridge not running).
* ``await bridge.subscribe(pattern)`` / ``await bridge.unsubscribe(pattern)`` —
  NATS-style patterns (``*`` one token, ``>`` the rest); refcounted, so the
  kernel may subscribe once per plugin. They return once the server has the
  interest (a PING/PONG round trip), so a publish made after ``subscribe``
  returns on another machine is delivered.
* ``bridge.inbound`` — a trio ``MemoryReceiveChannel[BridgedMessage]`` of
  ``(topic, payload, origin)`` named tuples, where ``origin`` is
  ``"nats:<instance>/<origin at the sender>"`` (``"nats:external"`` for a
  message from a plain NATS client, without our header).
* ``await bridge.flush()`` — returns when every publish enqueued before it has
  reached the server. ``await bridge.wait_connected()`` /
  ``wait_disconnected()``; ``bridge.stats`` (a ``BridgeStats`` snapshot).

Order
-----
Nothing overtakes a queued publish, and inbound messages reach trio in the
connection's arrival order, once each: see ``asyncio_side.py``.

Authentication
--------------
A kernel's bridge connects with the NATS server's credentials (``token``;
the server then refuses a client without them), signs every message it
sends with the kernel's ed25519 identity (header ``Astrid-Sig``, see
``wire.py``) and, given ``peers``, believes only messages signed by a peer
kernel for a topic that peer may publish: anything else is dropped,
counted (``stats.rejected``) and logged (a WARNING at the first rejection
and every 1000th). Each signature covers the bridge's session and a
sequence number, and a receiver believes a (kernel, session, seq) once
(``wire.ReplayGuard``): a captured message replayed is refused. A believed
message carries ``sender``, the remote plugin and the kernel that signed
for it. Without ``peers`` (transport
tests) nothing is verified and ``sender`` is None: the kernel always passes
peers.

Loop prevention
---------------
Every message carries the header ``Astrid-Origin: <instance>/<origin>``:
this kernel's instance id and the publisher inside it. (One short header, not
two: nats-py parses header values character by character, and two headers
with a 32-character id halved its throughput here.) The connection uses
``no_echo``, and anything carrying our own instance id is dropped as well. A message that
arrived from NATS is delivered with origin ``nats:...``; ``publish`` refuses
to send such a message back out, so a kernel that forwards every bus message
to the bridge cannot create a loop.

Failure and limits
------------------
nats-py reconnects forever (``reconnect_wait`` apart), re-subscribing on its
own; while disconnected it buffers up to ``pending_bytes`` of publishes, then
drops them (``stats.dropped_outbound``, a WARNING once per outage). Inbound,
when trio does not keep up and ``inbound_capacity`` messages wait in the
inbox, new messages are dropped and counted (``stats.dropped_inbound``):
NATS core is at-most-once, and the bridge never grows without bound.
Disconnects are logged at WARNING and reconnects at INFO on
``astrid_runtime.bus.nats.bridge``; ``wait_disconnected()``/``wait_connected()``
let a supervisor watch. If the bridge's thread itself dies, ``run()`` raises
``BridgeUnavailable`` naming the error.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, Final

import trio
from nats.aio.subscription import Subscription

from astrid_runtime.bus.nats import wire
from astrid_runtime.bus.nats.asyncio_side import STOP_GRACE, AsyncioSide
from astrid_runtime.bus.nats.handoff import FLUSH, PUB, STOP, SUB, UNSUB, Completion
from astrid_runtime.bus.nats.values import (
    REMOTE_ORIGIN_PREFIX,
    BridgedMessage,
    BridgeError,
    BridgeFull,
    BridgeInvalid,
    BridgeStats,
    BridgeTooLarge,
    BridgeUnavailable,
    is_remote_origin,
)
from astrid_runtime.identity import KernelIdentity

__all__ = [
    "HEADER_ORIGIN",
    "REMOTE_ORIGIN_PREFIX",
    "BridgeError",
    "BridgeFull",
    "BridgeInvalid",
    "BridgeStats",
    "BridgeTooLarge",
    "BridgeUnavailable",
    "BridgedMessage",
    "NatsBridge",
    "is_remote_origin",
    "open_nats_bridge",
]

log = logging.getLogger(__name__)

HEADER_ORIGIN: Final = wire.HEADER_ORIGIN
# Inbound messages handed to the trio channel between checkpoints.
_INBOX_BATCH: Final = 256


class NatsBridge(AsyncioSide):
    """Bridges the kernel's bus to NATS subjects ``<subject_prefix><topic>``."""

    def __init__(
        self,
        servers: str | list[str],
        *,
        instance_id: str | None = None,
        subject_prefix: str = "astrid.",
        name: str = "astridd",
        outbound_capacity: int = 65_536,
        inbound_capacity: int = 65_536,
        reconnect_wait: float = 0.5,
        connect_timeout: float = 2.0,
        pending_bytes: int = 8 * 1024 * 1024,
        identity: KernelIdentity | None = None,
        peers: tuple[wire.Peer, ...] | None = None,
        token: str | None = None,
    ) -> None:
        if subject_prefix and not wire.is_topic(subject_prefix.rstrip(".")):
            raise BridgeInvalid(f"subject prefix {subject_prefix!r} is not a valid NATS subject")
        self._servers = [servers] if isinstance(servers, str) else list(servers)
        # 48 random bits: unique enough among the kernels of one bus, short on the wire.
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        if not wire.is_instance_id(self.instance_id):
            raise BridgeInvalid(
                f"instance id {self.instance_id!r}: use letters, digits, '.', '_', '-'"
            )
        self._origin_prefix = self.instance_id + "/"
        self._prefix = subject_prefix
        self._name = name
        self._outbound_capacity = outbound_capacity
        self._inbound_capacity = inbound_capacity
        self._reconnect_wait = reconnect_wait
        self._connect_timeout = connect_timeout
        self._pending_bytes = pending_bytes
        self._identity = identity
        self._peers = peers
        self._auth_token = token
        self._session = wire.new_session()
        self._seq = itertools.count(1)  # next() is atomic under the GIL: any thread publishes
        self._replay_guard = wire.ReplayGuard()
        self._rejected = 0
        self._last_rejection: str | None = None
        self._max_payload = 1024 * 1024  # replaced by the server's value on connect

        self._inbound_send, self.inbound = trio.open_memory_channel[BridgedMessage](
            inbound_capacity
        )
        self._token: trio.lowlevel.TrioToken | None = None
        self._running = False
        self._stopping = False

        # trio -> asyncio. deque append/popleft are atomic under the GIL; the
        # flag protocol below avoids a cross-thread wakeup per message.
        self._outbox: deque[tuple[Any, ...]] = deque()
        self._outbox_waiting = False
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._outbox_event: asyncio.Event | None = None

        # asyncio -> trio.
        self._inbox: deque[BridgedMessage] = deque()
        self._inbox_waiting = False
        self._inbox_event = trio.Event()

        # Subscriptions: pattern -> (refcount, nats subscription); asyncio thread only.
        self._subs: dict[str, tuple[int, Subscription]] = {}
        self._active_patterns: tuple[str, ...] = ()
        self._canonical: dict[str, str | None] = {}

        # Connection state, mirrored into trio.
        self._connected = False
        self._state_event = trio.Event()

        self._published = 0
        self._received = 0
        self._dropped_outbound = 0
        self._dropped_inbound = 0
        self._echoes = 0
        self._reconnects = 0
        self._last_error: str | None = None
        self._outage_warned = False

    # -- trio side: lifecycle -------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, report started, and bridge until cancelled."""
        if self._running or self._token is not None:
            raise BridgeError("a NatsBridge runs once; create a new one")
        self._token = trio.lowlevel.current_trio_token()
        ready = Completion(self._token)
        exited = Completion(self._token)
        thread = threading.Thread(
            target=self._thread_main,
            args=(ready, exited),
            name=f"nats-bridge-{self.instance_id[:8]}",
            daemon=True,
        )
        thread.start()
        try:
            await ready.wait()
            self._running = True
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_inbox)
                # Only a crash ends the thread while we run: report it here.
                await exited.finished()
                nursery.cancel_scope.cancel()
            raise BridgeUnavailable(f"NATS bridge thread stopped: {self._last_error}")
        finally:
            self._running = False
            self._stopping = True
            self._enqueue((STOP,))
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(STOP_GRACE + self._connect_timeout),
            ):
                await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)
            if thread.is_alive():
                log.warning("NATS bridge thread did not stop within %.0f s", STOP_GRACE)
            self._inbound_send.close()

    # -- trio side: operations ------------------------------------------------

    def publish(self, topic: str, payload: bytes, origin: str) -> bool:
        """Queue ``payload`` for ``topic`` on NATS; False if it came from NATS."""
        if origin.startswith(REMOTE_ORIGIN_PREFIX):
            return False
        if not self._running:
            raise BridgeUnavailable("the NATS bridge is not running")
        if not wire.is_topic(topic):
            raise BridgeInvalid(f"topic {topic!r} is not a dot-separated topic without wildcards")
        if "\r" in origin or "\n" in origin:
            raise BridgeInvalid(f"origin {origin!r} must not hold CR or LF")
        if len(payload) > self._max_payload:
            raise BridgeTooLarge(
                f"payload of {len(payload)} bytes for {topic!r} is over the NATS server's "
                f"max_payload of {self._max_payload}"
            )
        if len(self._outbox) >= self._outbound_capacity:
            raise BridgeFull(
                f"NATS outbox full ({self._outbound_capacity} messages); "
                f"server {'connected' if self._connected else 'unreachable'}"
            )
        headers = {wire.HEADER_ORIGIN: self._origin_prefix + origin}
        if self._identity is not None:
            stamp = wire.Stamp(self._session, next(self._seq))
            headers[wire.HEADER_SIG] = wire.sign(self._identity, topic, origin, payload,
                                                 int(time.time() * 1000), stamp)
        self._enqueue((PUB, self._prefix + topic, bytes(payload), headers))
        return True

    async def subscribe(self, pattern: str) -> None:
        """Receive messages on ``pattern`` from NATS; returns once the server knows."""
        self._check_pattern(pattern)
        await self._control(SUB, pattern)

    async def unsubscribe(self, pattern: str) -> None:
        """Drop one reference to ``pattern``; the last one ends the NATS interest."""
        self._check_pattern(pattern)
        await self._control(UNSUB, pattern)

    async def flush(self) -> None:
        """Return once every publish queued before this call has reached the server."""
        await self._control(FLUSH, None)

    async def wait_connected(self) -> None:
        """Return once the bridge is connected to a server."""
        while not self._connected:
            await self._state_event.wait()

    async def wait_disconnected(self) -> None:
        """Return once the bridge has lost its server (it keeps reconnecting)."""
        while self._connected:
            await self._state_event.wait()

    @property
    def max_payload(self) -> int:
        """The largest payload the connected server accepts (its max_payload)."""
        return self._max_payload

    @property
    def stats(self) -> BridgeStats:
        """A snapshot of the counters."""
        return BridgeStats(
            connected=self._connected,
            published=self._published,
            received=self._received,
            dropped_outbound=self._dropped_outbound,
            dropped_inbound=self._dropped_inbound,
            echoes_dropped=self._echoes,
            reconnects=self._reconnects,
            last_error=self._last_error,
            rejected=self._rejected,
            last_rejection=self._last_rejection,
        )

    # -- trio side: internals -------------------------------------------------

    def _check_pattern(self, pattern: str) -> None:
        if not wire.is_pattern(pattern):
            raise BridgeInvalid(
                f"pattern {pattern!r}: use dot-separated tokens, '*' for one token, "
                "'>' last for the rest"
            )

    async def _control(self, kind: int, arg: str | None) -> None:
        if not self._running or self._token is None:
            raise BridgeUnavailable("the NATS bridge is not running")
        done = Completion(self._token)
        self._enqueue((kind, arg, done))
        await done.wait()

    def _enqueue(self, item: tuple[Any, ...]) -> None:
        self._outbox.append(item)
        # Read the flag only after appending: the consumer sets it before its
        # last emptiness check, so one of the two always sees the other.
        if self._outbox_waiting and self._aloop is not None and self._outbox_event is not None:
            self._outbox_waiting = False
            with suppress(RuntimeError):  # the loop has closed; the thread is gone
                self._aloop.call_soon_threadsafe(self._outbox_event.set)

    async def _pump_inbox(self) -> None:
        send = self._inbound_send
        inbox = self._inbox
        moved = 0
        while True:
            while inbox:
                # send_nowait skips a checkpoint per message while the channel
                # has room; yield now and then so a flood cannot starve trio.
                try:
                    send.send_nowait(inbox[0])
                except trio.WouldBlock:
                    await send.send(inbox[0])
                inbox.popleft()
                moved += 1
                if moved % _INBOX_BATCH == 0:
                    await trio.lowlevel.checkpoint()
            self._inbox_event = trio.Event()
            self._inbox_waiting = True
            if inbox:
                self._inbox_waiting = False
                continue
            await self._inbox_event.wait()

    def _wake_inbox(self) -> None:
        self._inbox_event.set()

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        self._state_event.set()
        self._state_event = trio.Event()



@asynccontextmanager
async def open_nats_bridge(servers: str | list[str], **options: Any) -> AsyncIterator[NatsBridge]:
    """Run a ``NatsBridge`` for the duration of the ``async with`` block."""
    bridge = NatsBridge(servers, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        try:
            yield bridge
        finally:
            nursery.cancel_scope.cancel()
