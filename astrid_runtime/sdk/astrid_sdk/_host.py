"""Host calls as Python: a refused call raises `HostError`, never a raw `Err`.

The generated bindings (`wit_world`, `componentize_py_types`) exist only
while componentize-py builds a component; this module is the one place the
SDK touches them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from componentize_py_types import Err

T = TypeVar("T")

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


class HostError(Exception):
    """A host call the kernel refused.

    `kind` is the `astrid:kernel/types.error` case in WIT spelling (`denied`,
    `not-found`, `too-large`, `rate-limited`, ...); `reason` is the kernel's
    sentence for a person.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


def error_kind(value: object) -> str:
    """`Error_NotFound(...)` -> `not-found`; anything unexpected -> `internal`."""
    cls = type(value).__name__
    if not cls.startswith("Error_"):
        return "internal"
    return _CAMEL.sub("-", cls.removeprefix("Error_")).lower()


def host_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a generated import; turn its `Err(error)` into `HostError`."""
    try:
        return fn(*args)
    except Err as e:
        value = e.value
        raise HostError(error_kind(value), str(getattr(value, "value", value))) from None


__all__ = ["HostError", "error_kind", "host_call"]
