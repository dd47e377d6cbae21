"""A consumer's side of the bus: its bounded `Mailbox`, the `Doorbell` that wakes
it from any thread, and the `TokenBucket` that meters a publisher. The router
(router.py) holds the one lock these run under; see its docstring for the
full-mailbox policy.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from astrid_runtime.bus.message import Message


class Doorbell:
    """Wakes one trio task from any thread; rings coalesce."""

    def __init__(self, token: trio.lowlevel.TrioToken, trio_thread: int):
        self._token = token
        self._trio_thread = trio_thread
        self._send, self._recv = trio.open_memory_channel[None](1)

    def _ring_here(self) -> None:
        # WouldBlock: already rung; Closed: the consumer is gone.
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
            self._send.send_nowait(None)

    def ring(self) -> None:
        if threading.get_ident() == self._trio_thread:
            self._ring_here()
        else:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._ring_here)

    async def wait(self) -> None:
        await self._recv.receive()


@dataclass
class MailboxStats:
    delivered: int = 0
    #: Messages this mailbox did not take because it was full (its owner's loss).
    overflowed: int = 0
    dropped: int = 0


class Mailbox:
    """A bounded FIFO of messages for one consumer. Guarded by the bus lock."""

    def __init__(self, capacity: int, doorbell: Doorbell, *, drop_oldest: bool = False):
        self.capacity = capacity
        self.drop_oldest = drop_oldest
        self.doorbell = doorbell
        self._queue: deque[Message] = deque()
        self._idle = True
        self.stats = MailboxStats()
        #: Called (outside the bus lock, in the publisher's thread) with the overflow
        #: count at the first overflow and every 1000th: the owner logs it.
        self.on_overflow: Callable[[int], None] | None = None
        #: The endpoint's name (the recorder lists who received a message).
        self.owner = ""

    def __len__(self) -> int:
        return len(self._queue)

    def full(self) -> bool:
        return len(self._queue) >= self.capacity

    def _put(self, message: Message) -> bool:
        """Enqueue (lock held); True when the consumer must be woken."""
        if self.full():
            self._queue.popleft()  # only reached for drop_oldest mailboxes
            self.stats.dropped += 1
        self._queue.append(message)
        if self._idle:
            self._idle = False
            return True
        return False

    def _take(self) -> Message | None:
        """Dequeue (lock held); None marks the consumer idle until the next put."""
        if self._queue:
            self.stats.delivered += 1
            return self._queue.popleft()
        self._idle = True
        return None

    def _clear(self) -> int:
        n = len(self._queue)
        self._queue.clear()
        self.stats.dropped += n
        return n


@dataclass
class TokenBucket:
    rate: float
    tokens: float
    stamp: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
