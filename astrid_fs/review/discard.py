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
from astrid_fs.review import basecontent, journal
from astrid_fs.review.bases import rebase_paths
from astrid_fs.review.changes import Change
from astrid_fs.review.commit import finish_interrupted, resolve_paths, session_changes
from astrid_fs.review.entrycopy import copy_tree
from astrid_fs.review.mountlink import MountLink, link_for
from astrid_fs.review.selection import is_under
from astrid_fs.review.snapshot import finish_rollback, take_snapshot
from astrid_fs.session import Session


def _remove(path: str) -> None:
    remove_entry(path, tree=True)


def _prune_parents(session: Session, rel: str) -> None:
    parent = rel.rpartition("/")[0]
    while parent:
        journal.prune_dir(session, parent, session.xattrs)
        parent = parent.rpartition("/")[0]


def discard(session: Session, paths: list[str], steps: journal.Steps | None = None,
            mount: MountLink | None = None) -> list[Change]:
    """Drop the changes under `paths` (everything if empty); returns them.
    Every path is checked before anything is dropped, and an automatic
    snapshot (`astrid-fs undo`) is taken first. The dropped paths' base
    becomes the project as it is now: the session sees the project there.
    `mount`: the session's mount (mountlink.py), flushed and told."""
    link = link_for(session, mount)
    with journal.locked(session):
        finish_interrupted(session, mount=link)
        finish_rollback(session, link)
        return discard_locked(session, paths, steps=steps, mount=link)


def discard_locked(session: Session, paths: list[str], reason: str = "",
                   steps: journal.Steps | None = None,
                   mount: MountLink | None = None) -> list[Change]:
    """`discard` with the session lock held by the caller; `reason` names
    the automatic snapshot (default: "before discard PATHS"; "-": none,
    the caller took one). `steps` counts each removal (crash tests)."""
    steps = steps or journal.Steps.from_env()
    link = link_for(session, mount)
    changes = session_changes(session, link)  # (under mounted sources too)
    prefixes = resolve_paths(session, paths)
    hits = [(prefix, _hits(changes, prefix)) for prefix in prefixes]
    missing = [prefix for prefix, found in hits if not found]
    if missing:
        raise UsageError("no change at " + ", ".join(map(repr, missing))
                         + " in this session; nothing was discarded")
    if not changes:
        # `--all` with no change left: what the upper still holds is no
        # change at all (a directory copied up for a file created and removed
        # again, as `git status` does with `.git/index.lock`); emptied, the
        # mount serves those directories as the project's again (lower-only,
        # their lookups answered in C) instead of as merged directories
        if not prefixes and _empty_upper(session, steps):
            link.changed(None)
        return []
    if reason != "-":
        take_snapshot(session, reason=reason or "before discard " + (
            " ".join(prefixes) if prefixes else "--all"), steps=steps, mount=link)
    steps.step()
    if not prefixes:
        _empty_upper(session, steps)
        _rebase(session, changes)
        basecontent.forget_all(session)
        link.changed(None)
        return changes
    dropped: list[Change] = []
    for prefix, found in hits:
        dropped += _discard_prefix(session, found, prefix, steps)
    _rebase(session, dropped)
    link.changed(sorted({c.path for c in dropped} | {
        c.lower_path for c in dropped if c.lower_path}))
    return dropped


def _empty_upper(session: Session, steps: journal.Steps) -> bool:
    """Remove every entry of the upper layer; whether there was any."""
    entries = sorted(os.listdir(session.upper))
    for entry in entries:
        _remove(os.path.join(session.upper, entry))
        steps.step()
    return bool(entries)


def _rebase(session: Session, dropped: list[Change]) -> None:
    """What the session now shows at the dropped paths is the project as it
    is: that is their base from now on (bases.py)."""
    paths = {p for c in dropped for p in (c.path, c.lower_path) if p}
    rebase_paths(session.root, session.lower, paths)
    basecontent.forget(session, paths)


def _hits(changes: list[Change], prefix: str) -> list[Change]:
    return [c for c in changes if is_under(c.path, prefix) or (
        c.status == "R" and c.lower_path is not None and is_under(c.lower_path, prefix))]


def _discard_prefix(session: Session, hits: list[Change], prefix: str,
                    steps: journal.Steps) -> list[Change]:
    upper = str(session.upper)
    for c in hits:
        if c.status == "R":
            # The renamed entry first, then the source's whiteout: a crash in
            # between leaves the source looking deleted (`discard SOURCE`
            # finishes it); the other order would show one lower dir at two
            # names, which kernel overlayfs refuses (ESTALE).
            _remove(os.path.join(upper, c.path))
            steps.step()
            if c.source_whiteout is not None:
                _remove(os.path.join(upper, c.source_whiteout))
                steps.step()
    if prefix:
        _remove(os.path.join(upper, prefix))
        steps.step()
    for c in hits:
        if c.status == "D" and not c.whiteout and c.lower_path is not None:
            _copy_back(session, c)
            steps.step()
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
