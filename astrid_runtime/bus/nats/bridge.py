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
One FIFO outbox carries publishes AND control operations (subscribe,
unsubscribe, flush, stop), and one asyncio task drains it in order into
nats-py's write buffer, so nothing overtakes a queued publish: a flush is a
PING queued behind the publishes, a stop sends them all first. (nats-py's own
``flush()`` writes its PING ahead of its pending buffer; ``_ordered_flush``
pushes that buffer out first.) NATS keeps a
publisher's order per connection. Inbound, nats-py would run one task per
subscription (two overlapping patterns could then reorder one publisher's
messages); instead each subscription's pending queue is replaced by a tap
that hands messages on in the connection's arrival order (this uses
nats-py's ``Subscription._pending_queue``; ``nats-py>=2.6,<3``, checked by
the tests). A message matching several of our patterns arrives once per
pattern; only the copy for the lowest matching pattern is delivered, so each
message reaches trio exactly once.

Authentication
--------------
A kernel's bridge connects with the NATS server's credentials (``token``;
the server then refuses a client without them), signs every message it
sends with the kernel's ed25519 identity (header ``Astrid-Sig``, see
``wire.py``) and, given ``peers``, believes only messages signed by a peer
kernel for a topic that peer may publish: anything else is dropped,
counted (``stats.rejected``) and logged (a WARNING at the first rejection
and every 1000th). A believed message carries ``sender``, the remote
plugin and the kernel that signed for it. Without ``peers`` (transport
tests) nothing is verified and ``sender`` is None: the kernel always passes
peers.

Loop prevention
---------------
Every message carries ONE header, ``Astrid-Origin: <instance>/<origin>``:
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
``astrid_runtime.nats_bridge``; ``wait_disconnected()``/``wait_connected()``
let a supervisor watch. If the bridge's thread itself dies, ``run()`` raises
``BridgeUnavailable`` naming the error.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NamedTuple

import nats
import nats.errors
import trio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from astrid_runtime.bus.nats import wire
from astrid_runtime.bus.router import Sender
from astrid_runtime.bus.topics import match_tokens
from astrid_runtime.errors import BusError
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

HEADER_ORIGIN: Final = "Astrid-Origin"
REMOTE_ORIGIN_PREFIX: Final = "nats:"
# Seconds to wait for the asyncio thread to finish on shutdown before leaving it
# (it is a daemon thread): connect_timeout plus a final flush round trip.
_STOP_GRACE: Final = 5.0
# Outbox items handed to nats-py between yields to its reader/flusher tasks.
_OUTBOX_BATCH: Final = 256
# Inbound messages handed to the trio channel between checkpoints.
_INBOX_BATCH: Final = 256

_TOKEN: Final = r"[^.\s*>]+"
_TOPIC_RE: Final = re.compile(rf"{_TOKEN}(?:\.{_TOKEN})*\Z")
_PATTERN_RE: Final = re.compile(rf"(?:{_TOKEN}|\*)(?:\.(?:{_TOKEN}|\*))*(?:\.>)?\Z|>\Z")


class BridgeError(BusError):
    """A NATS bridge operation failed; ``kind`` is the ABI error case."""

    error_kind: ClassVar[str] = "unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(self.error_kind, message)


class BridgeInvalid(BridgeError):
    """A malformed topic, pattern or origin."""

    error_kind = "invalid"


class BridgeTooLarge(BridgeError):
    """A payload over the NATS server's max_payload."""

    error_kind = "too-large"


class BridgeFull(BridgeError):
    """The outbox is full: the server is slow or unreachable; try again later."""

    error_kind = "rate-limited"


class BridgeUnavailable(BridgeError):
    """The bridge is not running, or NATS is unreachable."""


class BridgedMessage(NamedTuple):
    """A bus message that arrived from NATS."""

    topic: str
    payload: bytes
    origin: str
    #: The verified remote sender (None when the bridge verifies nothing).
    sender: Sender | None = None


@dataclass(frozen=True)
class BridgeStats:
    """Counters since the bridge started (a snapshot)."""

    connected: bool
    published: int
    received: int
    dropped_outbound: int
    dropped_inbound: int
    echoes_dropped: int
    reconnects: int
    last_error: str | None
    #: Inbound messages refused by `wire.admit` (unsigned, forged, not a peer, ...).
    rejected: int = 0
    last_rejection: str | None = None


def is_remote_origin(origin: str) -> bool:
    """True for the origin of a message that came in from NATS."""
    return origin.startswith(REMOTE_ORIGIN_PREFIX)


class _Completion:
    """A result that the asyncio thread hands to one waiting trio task."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._event = trio.Event()
        self._error: BaseException | None = None

    def complete(self, error: BaseException | None = None) -> None:
        """Called from the asyncio thread."""
        with suppress(trio.RunFinishedError):  # nobody is waiting any more
            self._token.run_sync_soon(self._finish, error)

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        self._event.set()

    async def finished(self) -> None:
        """Return once completed, with or without an error."""
        await self._event.wait()

    async def wait(self) -> None:
        """Return once completed; raise the error it completed with."""
        await self._event.wait()
        if self._error is not None:
            raise self._error


class _OrderedTap(asyncio.Queue[Msg]):
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


# Outbox item kinds; tuples keep the hot path allocation-light.
_PUB: Final = 0
_SUB: Final = 1
_UNSUB: Final = 2
_FLUSH: Final = 3
_STOP: Final = 4


class NatsBridge:
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
        if subject_prefix and not _TOPIC_RE.match(subject_prefix.rstrip(".")):
            raise BridgeInvalid(f"subject prefix {subject_prefix!r} is not a valid NATS subject")
        self._servers = [servers] if isinstance(servers, str) else list(servers)
        # 48 random bits: unique enough among the kernels of one bus, short on the wire.
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.instance_id):
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
        ready = _Completion(self._token)
        exited = _Completion(self._token)
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
            self._enqueue((_STOP,))
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(_STOP_GRACE + self._connect_timeout),
            ):
                await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)
            if thread.is_alive():
                log.warning("NATS bridge thread did not stop within %.0f s", _STOP_GRACE)
            self._inbound_send.close()

    # -- trio side: operations ------------------------------------------------

    def publish(self, topic: str, payload: bytes, origin: str) -> bool:
        """Queue ``payload`` for ``topic`` on NATS; False if it came from NATS."""
        if origin.startswith(REMOTE_ORIGIN_PREFIX):
            return False
        if not self._running:
            raise BridgeUnavailable("the NATS bridge is not running")
        if not _TOPIC_RE.match(topic):
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
        headers = {HEADER_ORIGIN: self._origin_prefix + origin}
        if self._identity is not None:
            headers[wire.HEADER_SIG] = wire.sign(self._identity, topic, origin, payload,
                                                 int(time.time() * 1000))
        self._enqueue((_PUB, self._prefix + topic, bytes(payload), headers))
        return True

    async def subscribe(self, pattern: str) -> None:
        """Receive messages on ``pattern`` from NATS; returns once the server knows."""
        self._check_pattern(pattern)
        await self._control(_SUB, pattern)

    async def unsubscribe(self, pattern: str) -> None:
        """Drop one reference to ``pattern``; the last one ends the NATS interest."""
        self._check_pattern(pattern)
        await self._control(_UNSUB, pattern)

    async def flush(self) -> None:
        """Return once every publish queued before this call has reached the server."""
        await self._control(_FLUSH, None)

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
        if not _PATTERN_RE.match(pattern):
            raise BridgeInvalid(
                f"pattern {pattern!r}: use dot-separated tokens, '*' for one token, "
                "'>' last for the rest"
            )

    async def _control(self, kind: int, arg: str | None) -> None:
        if not self._running or self._token is None:
            raise BridgeUnavailable("the NATS bridge is not running")
        done = _Completion(self._token)
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

    def _post_state(self, connected: bool) -> None:
        """From the asyncio thread: tell trio the connection state changed."""
        if self._token is not None:
            with suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._set_connected, connected)

    # -- asyncio thread -----------------------------------------------------------

    def _thread_main(self, ready: _Completion, exited: _Completion) -> None:
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

    async def _amain(self, ready: _Completion) -> None:
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
                await _ordered_flush(nc)
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
                if kind == _PUB:
                    await self._publish_one(nc, item[1], item[2], item[3])
                elif kind == _STOP:
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
        self, nc: NatsClient, kind: int, pattern: str | None, done: _Completion
    ) -> None:
        try:
            if kind == _SUB:
                assert pattern is not None
                await self._add_sub(nc, pattern)
                await _ordered_flush(nc)
            elif kind == _UNSUB:
                assert pattern is not None
                await self._drop_sub(pattern)
                await _ordered_flush(nc)
            elif kind == _FLUSH:
                await _ordered_flush(nc)
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
            sub._pending_queue = _OrderedTap(self._deliver, pattern)
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
        sender = headers.get(HEADER_ORIGIN)
        if sender is not None and sender.startswith(self._origin_prefix):
            self._echoes += 1
            return
        verified: Sender | None = None
        if self._peers is not None:
            plugin = sender.partition("/")[2] if sender is not None else ""
            verdict = wire.admit(topic, plugin, msg.data, headers.get(wire.HEADER_SIG),
                                 self._peers, int(time.time() * 1000))
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


async def _ordered_flush(nc: NatsClient) -> None:
    """Return once the server has processed every command given to ``nc`` so far.

    nats-py's ``flush()`` writes its PING straight to the socket, ahead of
    commands still in its pending buffer: a PONG could then come back before
    a queued SUB or PUB reached the server (seen here: a subscribe that
    returned before the server had the interest). So push the pending buffer
    out first (``_flush_pending(force_flush=True)`` returns once the flusher
    wrote it), then PING.
    """
    await nc._flush_pending(force_flush=True)
    await nc.flush(timeout=int(_STOP_GRACE))


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
