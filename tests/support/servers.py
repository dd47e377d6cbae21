"""Test support: follow a server process's log until it says it is ready.

The log is drained on a thread for the life of the process (a server whose
output pipe fills up stalls), appended to `log`, and watched for `marker`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import IO, Literal


class LogLines(list[str]):
    """A server's log lines, which a test can wait on: `wait_until` returns
    when a predicate over the lines holds (each appended line wakes it), not
    after a sleep."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition()

    def append(self, line: str) -> None:
        with self._changed:
            super().append(line)
            self._changed.notify_all()

    def wait_until(self, holds: Callable[[list[str]], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: holds(list(self)), timeout)


def wait_ready(stream: IO[str], log: list[str], marker: str, name: str,
               timeout: float) -> Literal["ready", "timeout", "exited"]:
    """Drain `stream` into `log` forever; return once a line contains
    `marker` ("ready"), no line came for `timeout` seconds, or it ended."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            log.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name=f"{name}-log", daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            return "timeout"
        if line is None:
            return "exited"
        if marker in line:
            return "ready"
