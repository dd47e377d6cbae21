"""Timing helpers of the kernel benchmarks (kernel.py, kernel_links.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], repeat: int,
          clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds per call of `fn` over `repeat` runs, by `clock`."""
    samples = []
    for _ in range(repeat):
        t = clock()
        fn()
        samples.append(clock() - t)
    return statistics.median(samples)


def cpu_timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median CPU seconds of this thread per call of `fn`: on a shared, loaded box a long
    loop's wall-clock time counts the other processes' turns, its CPU time does not."""
    return timed(fn, repeat, time.thread_time)


def us(seconds: float) -> str:
    """Microseconds (milliseconds from 1 ms up), for a table cell."""
    return f"{seconds * 1e6:,.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:,.2f} ms"
