"""The topic router: subscriptions, bounded mailboxes, per-plugin limits.

Thread model. Publishes come from guest calls running in worker threads
(a plugin's `bus.publish` host call) and from the trio thread (the control
socket). All bus state is guarded by one `threading.Lock`; the critical
sections are a few dict and deque operations, never a call into a guest
or a wait. A consumer waiting for mail is woken through its `Doorbell`,
which hops to the trio thread with `TrioToken.run_sync_soon` (cheap and
non-blocking: it never waits for trio the way `from_thread.run` does).

Ordering. Each mailbox is one FIFO and a publish enqueues to every matching
mailbox inside one critical section, so two messages from one publisher
reach every subscriber in the order they were published (a plugin's own
host calls are sequential: one guest call at a time per plugin).

Full mailbox policy ("a slow consumer hurts only itself"). A subscriber
whose mailbox is full does not get the message; every other subscriber
does, and the publish succeeds. The drop is the slow subscriber's own
loss: counted in its `overflowed` stat (shown by `astrid status`) and
logged by its supervisor at the first drop of a burst and every 1000th.
Memory stays bounded and nobody can stop the bus by not reading: under
the old "refuse, all or nothing" rule, one plugin subscribed to `>` that
stopped reading refused every publish on the bus (issue 12). Publishers
are limited by their own quota only (`publish_per_sec`, a token bucket,
and `max_payload_bytes`). Taps (`astrid tail`) drop their oldest message
instead, and report the gap.

Messages and senders are in message.py, mailboxes, doorbells and the
publish quota in mailbox.py.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

import astrid_runtime.grants as _grants
from astrid_runtime.bus.mailbox import Doorbell as Doorbell
from astrid_runtime.bus.mailbox import Mailbox as Mailbox
from astrid_runtime.bus.mailbox import MailboxStats as MailboxStats
from astrid_runtime.bus.mailbox import TokenBucket as TokenBucket
from astrid_runtime.bus.message import CLIENT as CLIENT
from astrid_runtime.bus.message import KERNEL as KERNEL
from astrid_runtime.bus.message import Message as Message
from astrid_runtime.bus.message import Sender as Sender
from astrid_runtime.bus.topics import match_tokens, validate_pattern, validate_topic
from astrid_runtime.errors import BusError

if TYPE_CHECKING:
    # grants imports bus.topics, which runs this package's __init__: import the
    # module, not its names, so either may be imported first.
    from astrid_runtime.grants import Grants, Limits


@dataclass
class _Subscription:
    id: int
    pattern: str
    tokens: list[str]
    endpoint: Endpoint


class Endpoint:
    """One participant on the bus: a plugin (with grants) or a tap."""

    def __init__(self, bus: Bus, name: str, grants: Grants | None, limits: Limits,
                 mailbox: Mailbox):
        self.bus = bus
        self.name = name
        self.grants = grants  # None: the kernel itself or a tap (no publish checks)
        self.limits = limits
        self.mailbox = mailbox
        self.bucket = TokenBucket(float(limits.publish_per_sec), float(limits.publish_per_sec))
        self.subscriptions: dict[int, _Subscription] = {}
        self.published = 0
        #: Subscription ids (re)made since `begin_renewal`; None when not renewing.
        self.renewed: set[int] | None = None

    def subscribe(self, pattern: str) -> int:
        return self.bus.subscribe(self, pattern)

    def unsubscribe(self, sub_id: int) -> None:
        self.bus.unsubscribe(self, sub_id)

    def publish(self, topic: str, payload: bytes) -> int:
        return self.bus.publish(self, topic, payload)

    def take(self) -> Message | None:
        """The next message, or None (and the consumer is idle until the doorbell rings)."""
        with self.bus.lock:
            return self.mailbox._take()

    def depth(self) -> int:
        with self.bus.lock:
            return len(self.mailbox)


class Bus:
    """Routes messages between endpoints. Thread-safe; see the module docstring."""

    def __init__(self, on_publish: Callable[[Message], None] | None = None):
        self.lock = threading.Lock()
        self._subs: dict[int, _Subscription] = {}
        self._ids = itertools.count(1)
        self._endpoints: dict[str, Endpoint] = {}
        #: Observer for bridges (NATS): called outside the lock, in the publisher's thread.
        self.on_publish = on_publish
        #: The recorder (recorder/recorder.py): called outside the lock, in the publisher's
        #: thread, with each message and the plugins whose mailboxes took it.
        self.on_record: Callable[[Message, list[str]], None] | None = None
        #: Sequence number of the last message (a recorder resumes from its store's last).
        self.seq = 0

    def attach(self, name: str, grants: Grants | None, limits: Limits, doorbell: Doorbell,
               *, drop_oldest: bool = False) -> Endpoint:
        """A new endpoint; a plugin name may be attached only once at a time."""
        with self.lock:
            if name in self._endpoints:
                raise BusError("conflict", f"{name} is already on the bus")
            mailbox = Mailbox(limits.mailbox, doorbell, drop_oldest=drop_oldest)
            mailbox.owner = name
            endpoint = Endpoint(self, name, grants, limits, mailbox)
            self._endpoints[name] = endpoint
            return endpoint

    def detach(self, endpoint: Endpoint) -> int:
        """Remove an endpoint, its subscriptions and its queued mail (count returned)."""
        with self.lock:
            for sub_id in list(endpoint.subscriptions):
                self._subs.pop(sub_id, None)
            endpoint.subscriptions.clear()
            self._endpoints.pop(endpoint.name, None)
            return endpoint.mailbox._clear()

    def subscribe(self, endpoint: Endpoint, pattern: str) -> int:
        """Subscribe; idempotent per (endpoint, pattern): the same id comes back."""
        tokens = validate_pattern(pattern)
        if endpoint.grants is not None:
            endpoint.grants.check_subscribe(pattern)
        with self.lock:
            existing = next((s for s in endpoint.subscriptions.values() if s.pattern == pattern),
                            None)
            if existing is None:
                existing = _Subscription(next(self._ids), pattern, tokens, endpoint)
                self._subs[existing.id] = existing
                endpoint.subscriptions[existing.id] = existing
            if endpoint.renewed is not None:
                endpoint.renewed.add(existing.id)
            return existing.id

    def begin_renewal(self, endpoint: Endpoint) -> None:
        """A restarted plugin is about to re-subscribe in `init`; keep its mail flowing."""
        with self.lock:
            endpoint.renewed = set()

    def end_renewal(self, endpoint: Endpoint) -> None:
        """Drop the subscriptions the restarted plugin did not make again."""
        with self.lock:
            renewed = endpoint.renewed or set()
            for sub_id in [i for i in endpoint.subscriptions if i not in renewed]:
                del endpoint.subscriptions[sub_id]
                del self._subs[sub_id]
            endpoint.renewed = None

    def unsubscribe(self, endpoint: Endpoint, sub_id: int) -> None:
        with self.lock:
            if sub_id not in endpoint.subscriptions:
                raise BusError("not-found", f"no subscription {sub_id}")
            del endpoint.subscriptions[sub_id]
            del self._subs[sub_id]

    def publish(self, endpoint: Endpoint | None, topic: str, payload: bytes, *,
                origin: str = CLIENT, remote: Sender | None = None) -> int:
        """Deliver to every matching mailbox with room; returns how many plugins got it
        (taps are not counted; a full mailbox is skipped and counts an overflow).

        Raises `BusError` with kind `invalid`, `denied`, `too-large` or
        `rate-limited` (over the publisher's own rate). The sender is the
        endpoint's name; the kernel's own publishes (`endpoint` None) name
        `origin`, or `remote`, a sender on another kernel the bridge verified.
        """
        tokens = validate_topic(topic)
        if endpoint is not None:
            sender = Sender(endpoint.name)
        elif remote is not None:
            sender = remote
        else:
            sender = Sender(origin)
        publisher = (sender.plugin if sender.kernel is None
                     else f"nats:{sender.kernel}/{sender.plugin}")
        if endpoint is not None:
            if endpoint.grants is not None:
                endpoint.grants.check_publish(topic)
            if len(payload) > endpoint.limits.max_payload_bytes:
                raise BusError("too-large", f"payload of {len(payload)} bytes is over the "
                               f"limit of {endpoint.limits.max_payload_bytes}")
        payload = bytes(payload)
        to_wake: list[Doorbell] = []
        record = self.on_record
        receivers: list[str] = []  # only when recording
        with self.lock:
            if endpoint is not None and not endpoint.bucket.take():
                raise BusError("rate-limited", f"over {endpoint.limits.publish_per_sec} "
                               "publishes per second")
            self.seq += 1
            message = Message(topic, payload, publisher, sender, self.seq)
            targets: list[Mailbox] = []
            for sub in self._subs.values():
                box = sub.endpoint.mailbox
                if match_tokens(sub.tokens, tokens) and box not in targets:
                    targets.append(box)
            delivered = 0
            overflows: list[tuple[Callable[[int], None], int]] = []
            for box in targets:
                if not box.drop_oldest and box.full():
                    box.stats.overflowed += 1
                    n = box.stats.overflowed
                    if box.on_overflow is not None and (n == 1 or n % 1000 == 0):
                        overflows.append((box.on_overflow, n))
                    continue
                delivered += not box.drop_oldest
                if record is not None and not box.drop_oldest:
                    receivers.append(box.owner)
                if box._put(message):
                    to_wake.append(box.doorbell)
            if endpoint is not None:
                endpoint.published += 1
        if record is not None:
            # Before waking anyone, so the event is queued before any call it causes.
            record(message, receivers)
        for bell in to_wake:
            bell.ring()
        for notify, n in overflows:
            notify(n)
        if self.on_publish is not None:
            self.on_publish(message)
        return delivered

    def endpoints(self) -> list[Endpoint]:
        with self.lock:
            return list(self._endpoints.values())


class Tap:
    """An observer of the bus (`astrid tail`, tests, benchmarks). Never refuses a publish.

    A slow tap drops its oldest messages; `dropped` says how many so far.
    Create and use it in the trio thread.
    """

    _serial = itertools.count(1)

    def __init__(self, bus: Bus, pattern: str, capacity: int = 4096):
        self._bus = bus
        self._doorbell = Doorbell(trio.lowlevel.current_trio_token(), threading.get_ident())
        limits = _grants.Limits(mailbox=capacity)
        self.endpoint = bus.attach(f"tap:{next(self._serial)}", None, limits, self._doorbell,
                                   drop_oldest=True)
        try:
            self.endpoint.subscribe(pattern)
        except BusError:
            bus.detach(self.endpoint)
            raise

    @property
    def dropped(self) -> int:
        return self.endpoint.mailbox.stats.dropped

    async def receive(self) -> Message:
        """The next message matching the pattern, waiting for it if need be."""
        while True:
            message = self.endpoint.take()
            if message is not None:
                return message
            await self._doorbell.wait()

    def close(self) -> None:
        self._bus.detach(self.endpoint)
