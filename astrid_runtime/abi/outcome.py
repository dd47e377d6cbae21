"""Turning kernel outcomes into ABI `result` values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from astrid_runtime.abi.canon import OK_UNIT, Case, Err, Ok
from astrid_runtime.errors import Refusal


def error(kind: str, message: str) -> Err[Case]:
    """`err(error.<kind>(message))`."""
    return Err(Case(kind, message))


def call(fn: Callable[[], Any]) -> Ok[Any] | Err[Case]:
    """Run `fn`; its value becomes `ok`, a `Refusal` becomes the matching error case.

    Other exceptions propagate to the host-function trampoline, which reports
    them as kernel bugs and returns `internal`.
    """
    try:
        value = fn()
    except Refusal as e:
        return error(e.kind, e.message)
    return OK_UNIT if value is None else Ok(value)
