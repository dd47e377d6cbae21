"""The audit trail: one structured line per decision or refusal.

Every capability decision (`cap.decision`), token check (`cap.check`) and
refused VFS call (`vfs.refused`) becomes a JSON object on one line,
`{"ts", "event", ...fields}`, appended to the audit file (when one is
configured: `$ASTRID_HOME/audit.jsonl` for `astrid run`) and logged to the
`astrid.audit` logger at info level. Lines are written whole with one
`write` on an `O_APPEND` fd, so concurrent writers never interleave
within a line. Thread-safe; host functions call it from guest threads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

LOGGER = "astrid.audit"


class AuditLog:
    """Appends audit lines to `path` (if any) and the `astrid.audit` logger."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self._logger = logging.getLogger(LOGGER)
        self._lock = threading.Lock()
        self._fd: int | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
        self.lines: list[dict[str, Any]] = []  # the last lines, for status and tests
        self.keep = 1000

    def record(self, event: str, fields: dict[str, Any]) -> None:
        """One audit line. Never raises for an I/O failure (it is logged instead)."""
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event,
                **fields}
        self._logger.info(event, extra={"astrid_fields": fields})
        encoded = (json.dumps(line, default=str, sort_keys=False) + "\n").encode()
        with self._lock:
            self.lines.append(line)
            del self.lines[:-self.keep]
            if self._fd is not None:
                try:
                    os.write(self._fd, encoded)
                except OSError as e:
                    self._logger.error("audit.write_failed", extra={"astrid_fields": {
                        "path": str(self.path), "error": e.strerror}})

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


__all__ = ["LOGGER", "AuditLog"]
