"""One timeline for files and messages: an astrid-fs snapshot per bus event that
changed the session's files.

When a plugin's handling of event SEQ changed files through the VFS, the
recorder asks astrid-fs (its Python API, as the kernel uses it for session
control) for a snapshot named `bus-SEQ` right after that call, in the
plugin's own thread, before it takes its next message. `astrid log` shows
the files and the snapshot beside the event; `astrid-fs rollback SESSION
bus-SEQ` takes the session's files back to how they were just after event
SEQ. (Another plugin writing at the same moment lands in the same
snapshot: the overlay has one upper layer, not one per plugin.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Host calls that change files, and the argument holding the path (after the handle).
_PATH_CALLS = {"vfs.[method]dir.mkdir": 1, "vfs.[method]dir.remove": 1,
               "vfs.[method]dir.rename": 2}
_OPEN = "vfs.[method]dir.open-file"
_WRITE_FLAGS = frozenset({"write", "create", "truncate", "append"})


def files_written(host: Sequence[tuple[str, list[Any], Any]]) -> list[str]:
    """Paths (as the plugin named them, relative to its directory handle) that the
    host calls `host` created, changed, renamed or removed."""
    if not any(name.startswith("vfs.") for name, _, _ in host):
        return []  # the common case, on every recorded call: keep it cheap
    paths: list[str] = []
    for name, args, result in host:
        failed = type(result).__name__ == "Err"
        if failed:
            continue
        if name == _OPEN and len(args) > 2 and isinstance(args[2], frozenset) \
                and args[2] & _WRITE_FLAGS:
            paths.append(str(args[1]))
        elif name in _PATH_CALLS and len(args) > _PATH_CALLS[name]:
            paths += [str(a) for a in args[1:_PATH_CALLS[name] + 1]]
    return list(dict.fromkeys(paths))


class Timeline:
    """Snapshots of one astrid-fs session, named by bus seq. Thread-safe (one at a time)."""

    def __init__(self, session: str, home: Path | None = None,
                 warn: Callable[[str], None] | None = None):
        self.session = session
        self.home = home
        #: Told why a snapshot was not taken (the recorder logs it).
        self.warn = warn
        self._lock = threading.Lock()

    def snapshot(self, seq: int, plugin: str) -> str | None:
        """Snapshot the session now as `bus-SEQ` (`bus-SEQ-PLUGIN` when two plugins
        wrote for one event); its name, or None when astrid-fs refused (logged)."""
        from astrid_fs.cli.daemonlink import DaemonLink
        from astrid_fs.errors import AstridFsError
        from astrid_fs.review.snapshot import snapshot
        from astrid_fs.session import open_session

        with self._lock:
            try:
                session = open_session(self.session, self.home)
                for name in (f"bus-{seq}", f"bus-{seq}-{plugin}"):
                    try:
                        return snapshot(session, name, mount=DaemonLink(session)).name
                    except AstridFsError as e:
                        if "already has a snapshot" not in str(e):
                            raise
            except AstridFsError as e:
                if self.warn is not None:
                    self.warn(f"no snapshot for bus event {seq}: {e}")
            return None
