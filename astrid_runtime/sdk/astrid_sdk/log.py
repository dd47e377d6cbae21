"""`astrid:kernel/log`: structured log lines into the kernel's log.

Logging never raises: a refused log line (over the size limit) is dropped.
"""

from __future__ import annotations

import contextlib

from wit_world.imports import log as _log

from astrid_sdk._host import HostError, host_call


def _write(level: object, message: str, fields: dict[str, object]) -> None:
    pairs = [(str(k), str(v)) for k, v in fields.items()]
    with contextlib.suppress(HostError):
        host_call(_log.write, level, message, pairs)


def debug(message: str, **fields: object) -> None:
    """A debug line with `key=value` fields."""
    _write(_log.Level.DEBUG, message, fields)


def info(message: str, **fields: object) -> None:
    """An info line with `key=value` fields."""
    _write(_log.Level.INFO, message, fields)


def warn(message: str, **fields: object) -> None:
    """A warning line with `key=value` fields."""
    _write(_log.Level.WARN, message, fields)


def error(message: str, **fields: object) -> None:
    """An error line with `key=value` fields."""
    _write(_log.Level.ERROR, message, fields)


__all__ = ["debug", "error", "info", "warn"]
