"""`astrid tail PATTERN` on a kernel's control socket, read by a thread into a queue."""

from __future__ import annotations

import base64
import json
import queue
import threading
from pathlib import Path
from typing import Any

from astrid_runtime.control import ControlClient

#: The bound of every wait for a message.
WAIT_S = 60


class Tail:
    """`tail PATTERN` on the control socket, read by a thread into a queue."""

    def __init__(self, socket: Path, pattern: str):
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        started = threading.Event()

        def read() -> None:
            for event in ControlClient(socket).stream({"op": "tail", "pattern": pattern}):
                if event.get("ok"):
                    started.set()
                    continue
                self.messages.put(json.loads(base64.b64decode(event["payload"])))

        threading.Thread(target=read, daemon=True).start()
        assert started.wait(WAIT_S), "tail did not start"

    def next(self) -> dict[str, Any]:
        return self.messages.get(timeout=WAIT_S)


__all__ = ["Tail"]
