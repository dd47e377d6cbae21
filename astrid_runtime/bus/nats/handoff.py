"""What the bridge's two halves hand each other: the outbox's item kinds (trio ->
asyncio, in one FIFO) and `Completion`, the answer to one trio task's request."""

from __future__ import annotations

from contextlib import suppress
from typing import Final

import trio

# Outbox item kinds; tuples keep the hot path allocation-light:
# (PUB, subject, payload, headers), (SUB|UNSUB|FLUSH, pattern|None, Completion), (STOP,).
PUB: Final = 0
SUB: Final = 1
UNSUB: Final = 2
FLUSH: Final = 3
STOP: Final = 4


class Completion:
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
