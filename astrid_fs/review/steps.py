"""Counting the steps of a review verb: for progress on a TTY, and so
that a test can make step N crash (`os._exit`) or fail (ENOSPC) through
the environment, read once when the count starts. Also the session lock
every verb that writes a session's layers holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from astrid_fs.errors import SessionError
from astrid_fs.session import Session

if TYPE_CHECKING:
    from astrid_fs.review.records import Record


CRASH_ENV = "ASTRID_FS_CRASH_AT"  # "N": os._exit(CRASH_EXIT) at the N-th step
FAIL_ENV = "ASTRID_FS_FAIL_AT"  # "N": raise ENOSPC at the N-th step (disk full)
CRASH_EXIT = 99


class BusyError(SessionError):
    """Another commit, discard or rollback holds the session."""


class Steps:
    """Counts journal steps (for progress, and so that a test can make step N
    crash with os._exit or fail with ENOSPC through the environment, read
    once at construction). `on_step(count, total)` reports progress."""

    def __init__(self, crash_at: int | None = None, fail_at: int | None = None,
                 on_step: Callable[[int, int], None] | None = None) -> None:
        self.count = 0
        self.total = 0
        self.crash_at = crash_at
        self.fail_at = fail_at
        self.on_step = on_step

    @classmethod
    def from_env(cls, on_step: Callable[[int, int], None] | None = None) -> Steps:
        crash, fail = os.environ.get(CRASH_ENV), os.environ.get(FAIL_ENV)
        return cls(int(crash) if crash else None, int(fail) if fail else None, on_step)

    def expect(self, rec: Record) -> None:
        """Set the total number of steps `rec` will take (for progress)."""
        self.total = self.count + 10 + len(rec.stage) + len(rec.vacate) + len(rec.place) \
            + len(rec.dirmeta) + len(rec.cleanup)

    def step(self) -> None:
        self.count += 1
        if self.count == self.crash_at:
            os._exit(CRASH_EXIT)
        if self.count == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        if self.on_step is not None:
            self.on_step(self.count, max(self.total, self.count))


@contextlib.contextmanager
def locked(session: Session) -> Iterator[None]:
    """Hold the session's journal lock: one commit/discard/rollback at a time."""
    session.journal_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(session.journal_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(
                f"session {session.name} is busy: another commit, discard or rollback "
                "is running") from None
        yield
    finally:
        os.close(fd)
