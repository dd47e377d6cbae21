"""`astrid-fs rm`: delete a session (its changes, snapshots and journal).

A mounted session is refused (unmount it first); one that still holds
changes, snapshots or an interrupted commit needs `--force`, like git's
`branch -D`. The session dir is renamed aside first, so the session is gone
at once even if the removal of its files is interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from typing import Any

from astrid_fs.errors import SessionError
from astrid_fs.fuse.mountinfo import is_mountpoint
from astrid_fs.review import journal
from astrid_fs.review.changes import scan
from astrid_fs.review.snapshot import list_snapshots
from astrid_fs.session import Session, open_session, sessions_dir


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `rm` to the `astrid-fs` parser."""
    p = sub.add_parser("rm", aliases=["remove"], help="delete a session",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Delete a session: its changes, snapshots and journal. "
                       "The project is not touched. A session that still holds changes or "
                       "snapshots needs --force.",
                       epilog="examples:\n  astrid-fs rm fix-bug\n  astrid-fs rm old-try --force")
    p.add_argument("sessions", nargs="+", metavar="SESSION")
    p.add_argument("--force", "-f", action="store_true",
                   help="delete even with changes, snapshots or an interrupted commit")
    p.set_defaults(func=cmd_rm)


def _what_is_left(session: Session) -> list[str]:
    left: list[str] = []
    if session.lower.is_dir():
        count = len(scan(session.upper, session.lower, session.xattrs))
        if count:
            left.append(f"{count} uncommitted change(s)")
    elif any(os.scandir(session.upper)):
        left.append("an upper layer over a vanished lower")
    snaps = list_snapshots(session)
    if snaps:
        left.append(f"{len(snaps)} snapshot(s)")
    if journal.pending(session):
        left.append("an interrupted commit")
    return left


def remove(session: Session, force: bool) -> None:
    """Delete `session`, or raise SessionError saying why not."""
    state = session.mount_state()
    if state is not None and (state.alive() or is_mountpoint(state.mountpoint)):
        raise SessionError(f"session {session.name} is mounted on {state.mountpoint}: "
                           f"run 'astrid-fs umount {session.name}' first")
    with journal.locked(session):
        left = _what_is_left(session)
        if left and not force:
            raise SessionError(f"session {session.name} holds {', '.join(left)}; commit or "
                               "discard them, or use --force to delete them with it")
        aside = sessions_dir() / f".removing-{session.name}-{os.getpid()}"
        os.rename(session.root, aside)
    shutil.rmtree(aside)


def cmd_rm(args: argparse.Namespace) -> int:
    sessions = [open_session(name) for name in args.sessions]  # all exist, or nothing done
    for session in sessions:
        remove(session, args.force)
        if not args.quiet and not args.json:
            print(f"removed session {session.name}")
    if args.json:
        print(json.dumps({"removed": [s.name for s in sessions]}))
    return 0
