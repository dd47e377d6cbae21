"""Leaving a process that ran the embedded SurrealDB engine.

The engine's threads outlive a store's `close`, and one of them, calling back
into a finalizing Python, aborts the process now and then ("panic in a
function that cannot unwind", exit -6 after the work was done): seen from the
recording writer on the kernel's stderr and from `astrid log` in Debian 13's
run of test_recording_daemon.py. Such a process leaves without the
interpreter's finalization, once everything is written and closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import NoReturn


def leave(code: int) -> NoReturn:
    """Exit with `code` now: log handlers and the standard streams flushed
    (a reader gone, `astrid log | head`, has nothing more to read), nothing
    else run."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    os._exit(code)
