"""A session's changes as the review verbs see them: the upper layer's
changes (changes.py) and those under mounted sources (remote_commit.py),
with conflicts marked (conflicts.py), and the paths a user names resolved
against the session (selection.py).
"""

from __future__ import annotations

import os

from astrid_fs.errors import SessionError
from astrid_fs.overlay.remote import SESSION_TABLE
from astrid_fs.review import basecontent
from astrid_fs.review.bases import open_index
from astrid_fs.review.changes import Change, scan
from astrid_fs.review.conflicts import check_conflicts, check_markers
from astrid_fs.review.lowers import SessionLowers
from astrid_fs.review.mountlink import UNMOUNTED, MountLink
from astrid_fs.review.remote_commit import mount_points, scan_remote
from astrid_fs.review.remotebase import complete_pending
from astrid_fs.review.selection import is_under, normalize_path
from astrid_fs.session import Session


def open_lowers(session: Session) -> SessionLowers | None:
    """The drivers of the session's mount table, or None without one."""
    if not (session.root / SESSION_TABLE).exists():
        return None
    return SessionLowers.open(session.root, session.lower)


def split_remote(changes: list[Change], points: list[str]
                 ) -> tuple[list[Change], list[Change], list[Change]]:
    """(local, remote, skipped): the changes for the local lower, those under
    a mounted source (`points`: "mnt/s3"), and new local dirs that exist only
    to hold a mount point (`mnt` for /mnt/s3), which never land locally."""
    remote = [c for c in changes if any(is_under(c.path, p) for p in points)]
    rest = {id(c) for c in remote}
    local = [c for c in changes if id(c) not in rest]
    skipped: list[Change] = []
    for c in sorted(local, key=lambda c: -_depth(c.path)):  # deepest first
        if (c.kind == "dir" and c.status in ("A", "T")
                and any(is_under(p, c.path) for p in points)
                and not any(o is not c and id(o) not in rest and is_under(o.path, c.path)
                            for o in local)):
            skipped.append(c)
            rest.add(id(c))
    return [c for c in local if id(c) not in rest], remote, skipped


def _depth(path: str) -> int:
    return path.count("/") + 1 if path else 0


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def check_lower_usable(session: Session) -> None:
    if not session.lower.is_dir():
        raise SessionError(f"session {session.name}: lower {session.lower} vanished "
                           "(no such directory); nothing was changed")


def session_changes(session: Session, mount: MountLink = UNMOUNTED,
                    bases: bool = True) -> list[Change]:
    """Every change of `session`, with conflicts marked. Flushes the mount
    first (`mount`; without one the upper is read as it is on disk). Without
    `bases` the base of a mounted source not walked yet stays so (no walk, no
    wait: `astrid-fs status`), and no conflict is known under it but those
    a copy-up's origin shows."""
    mount.sync(bases)  # (a mounted session's daemon finishes its base walk here)
    check_lower_usable(session)
    if bases:
        complete_pending(session.root, session.lower)  # (a walk no daemon finished)
    local = scan(session.upper, session.lower, session.xattrs)
    index = open_index(session.root)
    lowers = open_lowers(session)
    kept = basecontent.open_kept(session)
    try:
        if lowers is None:
            found = check_conflicts(local, session.lower, index, kept)
        else:
            # the upper dirs holding mount points (`mnt` for /mnt/s3) are no change
            local = split_remote(local, mount_points(lowers))[0]
            remote = scan_remote(session, lowers, index)
            found = sorted(check_conflicts(local, session.lower, index, kept) + remote,
                           key=lambda c: c.path)
        return check_markers(found, session.root, session.upper)
    finally:
        if kept is not None:
            kept.close()
        if lowers is not None:
            lowers.close()
        if index is not None:
            index.close()


def resolve_paths(session: Session, raw: list[str]) -> list[str]:
    state = session.mount_state()
    mnt = state.mountpoint if state is not None else None
    try:
        cwd: str | None = os.getcwd()
    except FileNotFoundError:  # (a removed working dir: paths are from the session root)
        cwd = None
    return [normalize_path(p, session.lower, mnt, cwd) for p in raw]
