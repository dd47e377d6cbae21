"""`astrid-fs status`: every session, whether its mount is alive, its
change and conflict counts, interrupted work, recorded remote mounts and
the data path its daemon serves files by.

Quick by design: it never walks a mounted source to record the session's
base (a bucket of a million keys is minutes of LISTs) nor waits for the
daemon's walk; such a point is listed as pending, and conflicts under it
show once a review verb (`diff`) took its base."""

from __future__ import annotations

import argparse
import json
import sqlite3
from typing import Any

from astrid_fs.cli.daemonlink import DaemonLink
from astrid_fs.drivers.errors import DriverError
from astrid_fs.errors import AstridFsError, MountError
from astrid_fs.fuse import control
from astrid_fs.fuse.mountinfo import fuse_mount_alive, is_mountpoint
from astrid_fs.mounttable import MountTable
from astrid_fs.review import journal
from astrid_fs.review.changes import Change
from astrid_fs.review.changeset import session_changes
from astrid_fs.review.mountlink import UNMOUNTED
from astrid_fs.review.remotebase import pending_points
from astrid_fs.session import Session, list_sessions, sessions_dir


def cmd_status(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for session in list_sessions():
        state = session.mount_state()
        alive = state is not None and state.alive() and is_mountpoint(state.mountpoint) \
            and fuse_mount_alive(state.mountpoint)
        changes = _changes(session, alive)
        rows.append({
            "name": session.name,
            "lower": str(session.lower),
            "created": session.created,
            "mounted": alive,
            "mountpoint": state.mountpoint if state is not None else None,
            "pid": state.pid if state is not None and alive else None,
            "stale_mount": state is not None and not alive,
            "changes": None if changes is None else len(changes),
            "conflicts": None if changes is None else sum(1 for c in changes if c.conflict),
            "interrupted": _interrupted(session),
            "mounts": _recorded_mounts(session),
            "base_pending": _base_pending(session),
            "data_path": _data_path(session) if alive else None,
        })
    if args.json:
        print(json.dumps({"sessions": rows}, indent=2))
        return 0
    if not rows:
        print(f"no sessions in {sessions_dir()}")
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        where = (f"mounted on {r['mountpoint']}" if r["mounted"]
                 else f"DEAD mount at {r['mountpoint']}" if r["stale_mount"] else "not mounted")
        count = "?" if r["changes"] is None else r["changes"]
        conflicts = f", {r['conflicts']} in conflict" if r["conflicts"] else ""
        print(f"{r['name']:<{width}}  {count:>6} changes{conflicts}  {where}  "
              f"(lower {r['lower']})")
        if r["data_path"]:
            print(f"{'':<{width}}    data: {r['data_path']['reason']}")
            if r["data_path"].get("transport"):
                print(f"{'':<{width}}    requests: {r['data_path']['transport']}")
        for what in r["interrupted"]:
            print(f"{'':<{width}}    interrupted {what}: the next astrid-fs command on "
                  "this session finishes it")
        for m in r["mounts"]:
            flags = " (read-only)" if m["read_only"] else ""
            print(f"{'':<{width}}    {m['path']} <- {m['source']}{flags}")
        for point in r["base_pending"]:
            print(f"{'':<{width}}    base of {point} not taken yet: conflicts there show "
                  "once `astrid-fs diff` takes it")
    return 0


def _data_path(session: Session) -> dict[str, Any] | None:
    """Which data path the mount's daemon serves files by (passthrough or
    the daemon), and why; None if the daemon does not answer."""
    try:
        reply = control.request(session, {"op": "stats"})
    except MountError:
        return None
    path = None if reply is None else reply.get("data_path")
    return path if isinstance(path, dict) else None


def _changes(session: Session, mounted: bool) -> list[Change] | None:
    """The changes `astrid-fs diff` lists, by the same scan, local and under
    mounted sources, after flushing a live mount (None if the session's layers
    cannot be read now, e.g. the lower vanished or a source is unreachable)."""
    try:
        return session_changes(session, DaemonLink(session) if mounted else UNMOUNTED,
                               bases=False)
    except (OSError, AstridFsError, DriverError):
        return None


def _base_pending(session: Session) -> list[str]:
    """Mount points whose base no walk has recorded yet (review/remotebase.py)."""
    try:
        return pending_points(session.root)
    except sqlite3.Error:
        return []  # (its change count reads "?": the scan needs the index too)


def _interrupted(session: Session) -> list[str]:
    """What a crash left for the next command to finish (commit, rollback)."""
    try:
        found = [f"commit {rec.txid} ({rec.state})" for rec in journal.pending(session)]
    except AstridFsError as e:
        found = [f"commit with an unreadable journal: {e}"]
    if (session.journal_dir / "rollback.json").exists():
        found.append("rollback")
    return found


def _recorded_mounts(session: Session) -> list[dict[str, Any]]:
    """The mount table a session recorded (no credentials are ever in it)."""
    path = session.root / "mounts.toml"
    if not path.exists():
        return []
    try:
        table = MountTable.load(path)
    except AstridFsError as e:
        return [{"path": "?", "source": f"unreadable mounts.toml: {e}", "driver": "?",
                 "read_only": True}]
    return [{"path": e.path, "source": e.source, "driver": e.driver, "read_only": e.read_only}
            for e in table.entries]
