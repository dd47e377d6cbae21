"""Drop a session's changes, all or under some paths, by editing the upper
layer back to "no change here": remove upper entries (a renamed dir takes
its source whiteout with it), and copy a lower entry back up where an
opaque upper dir hides it. Not journaled: each step is one rename-safe
removal or an atomic copy-up, so a crash leaves some changes discarded and
the rest intact; running discard again finishes it.
"""

from __future__ import annotations

import contextlib
import os

from astrid_fs.durable import remove_entry
from astrid_fs.errors import UsageError
from astrid_fs.fuse import control
from astrid_fs.review import journal
from astrid_fs.review.changes import Change, scan
from astrid_fs.review.commit import check_lower_usable, finish_interrupted, resolve_paths
from astrid_fs.review.entrycopy import copy_tree
from astrid_fs.review.selection import is_under
from astrid_fs.session import Session


def _remove(path: str) -> None:
    remove_entry(path, tree=True)


def _prune_parents(session: Session, rel: str) -> None:
    parent = rel.rpartition("/")[0]
    while parent:
        journal.prune_dir(session, parent, session.xattrs)
        parent = parent.rpartition("/")[0]


def discard(session: Session, paths: list[str]) -> list[Change]:
    """Drop the changes under `paths` (everything if empty); returns them."""
    with journal.locked(session):
        finish_interrupted(session)
        control.sync(session)
        check_lower_usable(session)
        changes = scan(session.upper, session.lower, session.xattrs)
        prefixes = resolve_paths(session, paths)
        if not prefixes:
            for entry in os.listdir(session.upper):
                _remove(os.path.join(session.upper, entry))
            control.notify_changed(session, None)
            return changes
        dropped: list[Change] = []
        for prefix in prefixes:
            dropped += _discard_prefix(session, changes, prefix)
        control.notify_changed(session, sorted({c.path for c in dropped} | {
            c.lower_path for c in dropped if c.lower_path}))
        return dropped


def _discard_prefix(session: Session, changes: list[Change], prefix: str) -> list[Change]:
    upper = str(session.upper)
    hits = [c for c in changes if is_under(c.path, prefix) or (
        c.status == "R" and c.lower_path is not None and is_under(c.lower_path, prefix))]
    if not hits:
        raise UsageError(f"no change at {prefix!r} in this session")
    for c in hits:
        if c.status == "R":
            _remove(os.path.join(upper, c.path))
            if c.source_whiteout is not None:
                _remove(os.path.join(upper, c.source_whiteout))
    if prefix:
        _remove(os.path.join(upper, prefix))
    for c in hits:
        if c.status == "D" and not c.whiteout and c.lower_path is not None:
            _copy_back(session, c)
    _prune_parents(session, prefix)
    return hits


def _copy_back(session: Session, change: Change) -> None:
    """Undo a deletion that an opaque dir expresses: copy the lower entry up."""
    up = os.path.join(session.upper, change.path)
    parent = os.path.dirname(up)
    if os.path.lexists(up) or not os.path.isdir(parent):
        return
    tmp = os.path.join(session.tmp, f"discard-{os.getpid()}")
    session.tmp.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        _remove(tmp)
    copy_tree(os.path.join(session.lower, change.lower_path or change.path), tmp)
    os.rename(tmp, up)
