"""Progress on a terminal for anything that takes over a second (rich).

`Progress(label)` is a context manager and a step callback
(`on_step(count, total)`, as journal.Steps calls it): on a TTY, and unless
quiet, it shows a transient bar once the work has run for a second; off a
TTY it shows nothing. Without steps (diff, snapshot, discard) it shows a
spinner after a second.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress

DELAY_S = 1.0  # nothing is shown for work shorter than this
DELAY_ENV = "ASTRID_FS_PROGRESS_DELAY"  # seconds, overrides DELAY_S (tests: 0)


class Progress:
    def __init__(self, label: str, quiet: bool = False) -> None:
        self.label = label
        self.enabled = not quiet and sys.stderr.isatty()
        self.delay = float(os.environ.get(DELAY_ENV, DELAY_S))
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.bar: RichProgress | None = None
        self.task: TaskID | None = None
        self.timer: threading.Timer | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self.timer = threading.Timer(self.delay, self._show)
            self.timer.daemon = True
            self.timer.start()
        return self

    def _show(self, total: int | None = None) -> None:
        with self.lock:
            if self.bar is not None or not self.enabled:
                return
            self.bar = RichProgress(SpinnerColumn(), TextColumn(self.label), BarColumn(),
                                    MofNCompleteColumn(), TimeElapsedColumn(),
                                    console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task(self.label, total=total)
            self.bar.start()

    def __call__(self, count: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None and time.monotonic() - self.start >= self.delay:
            self._show(total)
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=count, total=total)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        with self.lock:
            self.enabled = False
            if self.bar is not None:
                self.bar.stop()
