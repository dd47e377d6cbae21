"""Structured kernel logs: one JSON object per line, via stdlib `logging`.

Kernel events go to the `astrid.kernel` logger as `event` plus fields;
plugin log lines (the `log` interface) go to `astrid.plugin.<name>`. Both
are thread-safe (host functions log from worker threads). `JsonFormatter`
renders a record as `{"ts", "level", "logger", "event"/"message", ...fields}`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_LEVELS = {
    "trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
    "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
}


class KernelLog:
    """The kernel's log: events with fields, plugin lines, host-function bugs."""

    def __init__(self, name: str = "astrid.kernel"):
        self.logger = logging.getLogger(name)
        self._plugin_loggers: dict[str, logging.Logger] = {}

    def event(self, level: str, event: str, **fields: Any) -> None:
        self.logger.log(_LEVELS[level], event, extra={"astrid_fields": fields})

    def plugin_line(self, plugin: str, level: str, message: str,
                    fields: list[tuple[str, str]]) -> None:
        logger = self._plugin_loggers.get(plugin)
        if logger is None:  # getLogger takes a module lock: look it up once
            logger = self._plugin_loggers.setdefault(
                plugin, logging.getLogger(f"astrid.plugin.{plugin}"))
        number = _LEVELS.get(level, logging.INFO)
        if logger.isEnabledFor(number):
            logger.log(number, message,
                       # the kernel's `plugin` wins: a plugin cannot log as another
                       extra={"astrid_fields": {**dict(fields), "plugin": plugin}})

    def host_bug(self, plugin: str, function: str, error: BaseException) -> None:
        self.logger.error("host.bug", exc_info=error,
                          extra={"astrid_fields": {"plugin": plugin, "function": function}})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Fields first, then the record's own keys: a plugin's fields cannot
        # overwrite the timestamp, level, logger or message of its line.
        out: dict[str, Any] = dict(getattr(record, "astrid_fields", {}))
        out["ts"] = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                     + f".{int(record.msecs):03d}Z")
        out["level"] = record.levelname.lower()
        out["logger"] = record.name
        key = "event" if record.name == "astrid.kernel" else "message"
        out[key] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str = "info", stream: Any = None, fmt: str = "json") -> None:
    """Send `astrid.*` logs to `stream` (stderr) as JSON lines (or plain text)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("astrid")
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    root.propagate = False
