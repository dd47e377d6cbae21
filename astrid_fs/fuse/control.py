"""Client side of a mounted session's control socket.

Commands that change a session's layers behind the mount's back (commit,
discard, rollback) call `notify_changed` afterwards so that the daemon drops
its own caches and the kernel's (dentries, attributes, page cache) for those
paths. A session that is not mounted makes these calls no-ops.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable
from typing import Any

from astrid_fs.errors import MountError
from astrid_fs.session import Session

TIMEOUT_S = 30.0


def request(session: Session, message: dict[str, Any]) -> dict[str, Any] | None:
    """Send one JSON request to the session's daemon; None if not mounted."""
    state = session.mount_state()
    if state is None or not state.alive():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT_S)
        try:
            sock.connect(state.control)
            sock.sendall(json.dumps(message).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as e:
            raise MountError(f"session {session.name}: control socket: {e}") from e
    try:
        reply: dict[str, Any] = json.loads(buf)
    except ValueError as e:
        raise MountError(f"session {session.name}: bad control reply {buf[:80]!r}") from e
    if not reply.get("ok"):
        raise MountError(f"session {session.name}: daemon said: {reply.get('error')}")
    return reply


def notify_changed(session: Session, paths: Iterable[str] | None = None) -> None:
    """Tell a mounted session's daemon that these session-relative paths
    (or, with None, everything) changed in the upper or lower layer."""
    request(session, {"op": "invalidate", "paths": None if paths is None else list(paths)})


def held_upper_inodes(session: Session) -> frozenset[int]:
    """st_ino of the upper files a mounted session's kernel holds open for
    passthrough (fuse/passthrough.py): they must stay in the upper. Empty
    when not mounted or when the daemon does not answer."""
    try:
        reply = request(session, {"op": "held"})
    except MountError:
        return frozenset()
    return frozenset(reply.get("upper_inodes", ()) if reply else ())


def sync(session: Session, waiting: Callable[[list[str], int], None] | None = None,
         bases: bool = True) -> None:
    """Ask a mounted session's daemon to make the upper layer current on disk
    (flushes data the kernel still caches) before it is read directly, and
    with `bases` to finish recording the base of its mounted sources (asked
    again while the daemon says some are pending; `waiting(points, entries
    walked)` is told each time). A walk that failed raises MountError."""
    while True:
        reply = request(session, {"op": "sync", "bases": bases})
        pending = [] if reply is None else reply.get("base_pending") or []
        if reply is None or not pending:
            return
        if waiting is not None:
            waiting(pending, int(reply.get("base_entries") or 0))
