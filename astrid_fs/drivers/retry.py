"""Retries of temporary driver failures, in one place.

A driver translates its transport's exceptions into `DriverError`s and
wraps each network call in `RetryPolicy.call`. Only errors whose
`temporary` is true (unreachable, timeout, 5xx) are tried again, with
exponential backoff and full jitter
(https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/),
and never past the policy's deadline: every call ends, successfully or with
the last error, within `deadline_s` plus one request timeout.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from astrid_fs.drivers.errors import DriverError

T = TypeVar("T")
log = logging.getLogger("astrid_fs.drivers")


@dataclass(frozen=True)
class RetryPolicy:
    """At most `attempts` tries, backoff from `initial_backoff_s` doubling to
    `max_backoff_s`, no new try after `deadline_s` from the first."""

    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    deadline_s: float = 20.0

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Run `fn`, retrying temporary `DriverError`s; `what` names it in log lines."""
        start = time.monotonic()
        backoff = self.initial_backoff_s
        attempt = 1
        while True:
            try:
                return fn()
            except DriverError as e:
                if not e.temporary or attempt >= self.attempts:
                    raise
                pause = random.uniform(0, backoff)
                if time.monotonic() - start + pause > self.deadline_s:
                    raise
                log.debug("%s: %s; retry %d in %.2fs", what, e, attempt, pause)
                time.sleep(pause)
                backoff = min(backoff * 2, self.max_backoff_s)
                attempt += 1


NO_RETRY = RetryPolicy(attempts=1)
