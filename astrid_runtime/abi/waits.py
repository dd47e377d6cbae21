"""Host calls that wait do not spend the guest's call deadline.

A plugin's call runs under an epoch deadline (`Limits.call_timeout_ms`).
Some host functions wait on something outside the guest — a person's answer
(`cap.request`), the network (`http.send` / `read`), the kernel's own state
(a frontend's `dashboard` reads) — and that wait is not the plugin's time:
after it, the call gets a fresh deadline, so only the guest's own work
counts against it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

from astrid_runtime.abi.canon import set_epoch_deadline
from astrid_runtime.abi.context import PluginContext

_T = TypeVar("_T")

#: The epoch tick when the kernel has no pipeline to say (engine.py's default).
DEFAULT_TICK_MS = 10


def rearm(store_context: int, ctx: PluginContext, tick_ms: int) -> None:
    """Give the guest's current call a fresh deadline of its own `call_timeout_ms`."""
    set_epoch_deadline(store_context, math.ceil(ctx.limits.call_timeout_ms / tick_ms) + 1)


def waited(store_context: int, ctx: PluginContext, fn: Callable[[], _T]) -> _T:
    """`fn()`, then a fresh deadline if it took longer than one epoch tick."""
    tick_ms = ctx.approvals.epoch_tick_ms if ctx.approvals is not None else DEFAULT_TICK_MS
    started = time.monotonic()
    try:
        return fn()
    finally:
        if time.monotonic() - started > tick_ms / 1000:
            rearm(store_context, ctx, tick_ms)
