"""The review's mount hook (review/mountlink.py) for a session mounted by
an astrid-fs daemon: each call is one request on its control socket (a
session that is not mounted makes them no-ops)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from astrid_fs.fuse import control
from astrid_fs.session import Session


class DaemonLink:
    """Flush, invalidate and ask a mounted session's daemon."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def sync(self, bases: bool = True) -> None:
        told = False

        def waiting(points: list[str], entries: int) -> None:
            nonlocal told
            if not told:
                print(f"astrid-fs: waiting for the session's base of {', '.join(points)} "
                      f"({entries:,} entries walked so far)", file=sys.stderr, flush=True)
                told = True

        control.sync(self.session, waiting, bases=bases)

    def changed(self, paths: Iterable[str] | None) -> None:
        control.notify_changed(self.session, paths)

    def held_upper_inodes(self) -> frozenset[int]:
        return control.held_upper_inodes(self.session)
