"""Timing helpers of the kernel benchmarks (kernel.py, kernel_links.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds per call of `fn` over `repeat` runs."""
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def cpu_timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median CPU seconds of this thread per call of `fn`: on a shared, loaded box a long
    loop's wall-clock time counts the other processes' turns, its CPU time does not."""
    samples = []
    for _ in range(repeat):
        t = time.thread_time()
        fn()
        samples.append(time.thread_time() - t)
    return statistics.median(samples)


def us(seconds: float) -> str:
    """Microseconds (milliseconds from 1 ms up), for a table cell."""
    return f"{seconds * 1e6:,.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:,.2f} ms"
