"""Land a session's changes in the lower layer: `commit` turns the selected
changes into one journal record (what to stage, vacate, place, clean up)
and hands it to the journal, which carries it out crash-safely.

Rules the plan follows (docs/design/journal.md):
- every non-directory lands by a staged copy renamed over its target, so a
  reader of the lower sees the old entry or the new one, never a torn one;
- a redirected upper dir is a renamed lower dir: the lower dir itself is
  renamed (its unchanged children never copied);
- a file whose origin names another, deleted path is a rename: renamed in
  the lower if nothing else changed, else a fresh copy plus a deletion;
- a conflict (lower moved on since copy-up) stops the commit before the
  journal is written, unless `force`;
- committed entries leave the upper, except below an opaque upper dir that
  still hides lower entries (there they stay, equal to the lower).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from astrid_fs.drivers.errors import DriverError
from astrid_fs.durable import write_atomic
from astrid_fs.errors import ConflictError, MountError, SessionError
from astrid_fs.review import journal
from astrid_fs.review.changes import Change
from astrid_fs.review.changeset import (
    check_lower_usable,
    open_lowers,
    resolve_paths,
    session_changes,
    split_remote,
)
from astrid_fs.review.entrycopy import copy_tree
from astrid_fs.review.journal import Record, Steps
from astrid_fs.review.lowers import SessionLowers
from astrid_fs.review.mountlink import UNMOUNTED, MountLink, link_for
from astrid_fs.review.plan import describe, plan
from astrid_fs.review.projectlock import project_locked
from astrid_fs.review.remote_commit import RemoteOp, mount_points, plan_ops
from astrid_fs.review.selection import select
from astrid_fs.session import Session, astrid_home

__all__ = [  # (what the verbs import from here, wherever it lives now)
    "CommitResult", "check_lower_usable", "commit", "describe", "finish_interrupted",
    "keep_overwritten", "open_lowers", "plan", "resolve_paths", "session_changes",
    "split_remote", "tell_mount",
]

_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


@dataclass(frozen=True)
class CommitResult:
    changes: tuple[Change, ...]
    record: Record | None  # None when there was nothing to commit
    dry_run: bool
    skipped: tuple[Change, ...] = ()  # new dirs that only hold a mount point
    kept: Path | None = None  # --force: where the project's overwritten versions are
    warning: str | None = None  # the commit landed, but the mount could not be told
    targets: tuple[str, ...] = ()  # where it landed: the lower dir and/or source URLs


def conflict_error(conflicts: list[Change]) -> ConflictError:
    listed = "; ".join(f"{c.path}: {c.conflict}" for c in conflicts[:5])
    more = f" (and {len(conflicts) - 5} more)" if len(conflicts) > 5 else ""
    return ConflictError(f"commit refused, {len(conflicts)} conflict(s): {listed}{more}; "
                         "review with `astrid-fs diff`, then `astrid-fs resolve` them "
                         "(--ours, --theirs, --merge) or use --force",
                         tuple((c.path, c.conflict or "") for c in conflicts))


def commit_sources(session: Session) -> list[str]:
    """What a commit of `session` writes: its lower dir and every writable
    source of its mount table (the keys of the project commit lock)."""
    sources = [str(session.lower)]
    lowers = open_lowers(session)
    if lowers is not None:
        sources += [e.source for e in lowers.table.entries
                    if e.path != "/" and not e.read_only]
        lowers.close()
    return sources


def commit(session: Session, paths: list[str], *, force: bool = False,
           dry_run: bool = False, steps: Steps | None = None,
           on_wait: Callable[[str], None] | None = None,
           mount: MountLink | None = None) -> CommitResult:
    """Land the changes under `paths` (all if empty) in the lower layer.

    Holds the session's lock and the commit lock of its project(s), so a
    second commit to the same project (from any session) waits, then sees
    what this one landed as conflicts. `on_wait(project)` is called first
    when it has to wait. `mount`: the session's mount (mountlink.py)."""
    link = link_for(session, mount)
    if session.stack:
        # Landing in a stack would mean writing overlay whiteouts into a
        # lower that is itself an upper: not built; refuse before anything.
        raise SessionError(f"session {session.name} stacks {len(session.stack) + 1} lower "
                           "layers; commit lands in a single lower only (commit the "
                           "session beneath first, then re-stack)")
    steps = steps or Steps.from_env()
    with journal.locked(session), project_locked(
            commit_sources(session), astrid_home(), on_wait):
        _recover(session, link)
        return _commit_locked(session, paths, force, dry_run, steps, link)


def _commit_locked(session: Session, paths: list[str], force: bool, dry_run: bool,
                   steps: Steps, mount: MountLink) -> CommitResult:
    everything = session_changes(session, mount)
    chosen = select(everything, resolve_paths(session, paths))
    skipped: list[Change] = []
    ops: list[RemoteOp] = []
    lowers = open_lowers(session)
    if lowers is not None:
        try:
            local, remote, skipped = split_remote(chosen, mount_points(lowers))
            ops = plan_ops(session, lowers, remote)
        finally:
            lowers.close()
        chosen = local + remote
    if not chosen:
        return CommitResult((), None, dry_run, tuple(skipped))
    conflicts = [c for c in chosen if c.conflict]
    if conflicts and not force:
        raise conflict_error(conflicts)
    rec = replace(plan(session, everything, chosen), remote=tuple(ops))
    if dry_run:
        return CommitResult(tuple(chosen), rec, True, tuple(skipped))
    kept = keep_overwritten(session, conflicts, mount) if conflicts else None
    steps.expect(rec)
    journal.save_ops(session, rec)
    journal.save(session, rec)
    try:
        steps.step()
        journal.run(session, rec, steps, mount)
    except (OSError, DriverError) as e:
        raise _failed(session, rec, e, mount) from e
    warning = tell_mount(mount, rec.paths)
    return CommitResult(tuple(chosen), rec, False, tuple(skipped), kept, warning,
                        _targets(session, chosen))


def _targets(session: Session, chosen: list[Change]) -> tuple[str, ...]:
    """Where the changes land, as a person names it: the project dir, and
    the source (`s3://bucket/prefix`) of each mounted source written."""
    found: list[str] = []
    lowers = open_lowers(session)
    try:
        for c in chosen:
            where = str(session.lower)
            if lowers is not None and lowers.is_remote(c.path):
                where = lowers.resolve(c.path).entry.source
            if where not in found:
                found.append(where)
    finally:
        if lowers is not None:
            lowers.close()
    return tuple(found)


def tell_mount(mount: MountLink, paths: tuple[str, ...] | None) -> str | None:
    """Ask a mounted session's daemon to drop what it cached of `paths`
    after they landed. The commit is done whatever the daemon answers: a
    failure here is a warning (the mount may show old data), never an error."""
    try:
        mount.changed(paths)
    except MountError as e:
        return (f"committed, but the mount was not told ({e}); it may show old data "
                "until it is remounted")
    return None


def keep_overwritten(session: Session, conflicts: list[Change], mount: MountLink) -> Path:
    """Before a forced commit: an automatic snapshot of the session (`undo`)
    holding, under `overwritten/`, a copy of every project entry the commit
    is about to overwrite or delete. Returns that dir."""
    # Imported here: snapshot.py builds on this module (finish_interrupted).
    from astrid_fs.review.snapshot import snapshot_dir, take_snapshot

    snap = take_snapshot(session, reason=f"before commit --force over {len(conflicts)} "
                         "conflict(s)", mount=mount)
    keep = snapshot_dir(session, snap) / "overwritten"
    lowers = open_lowers(session)
    paths = sorted({c.lower_path or c.path for c in conflicts})
    write_atomic(keep.parent / "overwritten.json", json.dumps(paths).encode())
    try:
        for path in paths:
            out = keep / path
            out.parent.mkdir(parents=True, exist_ok=True)
            if lowers is not None and lowers.is_remote(path):
                _fetch_remote(lowers, path, out)
            elif os.path.lexists(session.lower / path):
                copy_tree(str(session.lower / path), str(out))
    finally:
        if lowers is not None:
            lowers.close()
    journal.sync_fs(keep.parent)
    return keep


def _fetch_remote(lowers: SessionLowers, path: str, out: Path) -> None:
    r = lowers.resolve(path)
    entry = r.driver.stat(r.rel)
    if entry is None or entry.kind != "file":
        return
    reader = r.driver.open_reader(r.rel, entry)
    try:
        with open(out, "wb") as f:
            offset = 0
            while offset < entry.size:
                chunk = reader.pread(min(1 << 20, entry.size - offset), offset)
                if not chunk:
                    break
                f.write(chunk)
                offset += len(chunk)
    finally:
        reader.close()


def _failed(session: Session, rec: Record, err: OSError | DriverError,
            mount: MountLink) -> SessionError:
    """Roll back a commit that failed before its commit point; otherwise leave
    the journal for the next run. Returns the error to raise."""
    path = journal.record_path(session, rec.txid)
    try:
        state = journal.load(session, rec.txid).state
    except SessionError:
        state = "prepared"
    code = err.errno if isinstance(err, OSError) else None
    reason = (err.strerror if isinstance(err, OSError) else None) or str(err)
    if code in _READ_ONLY and state == "prepared":
        reason = f"lower {session.lower} is not writable ({reason})"
    elif code == errno.ENOENT and not session.lower.is_dir():
        reason = f"lower {session.lower} vanished"
    if state == "prepared":
        try:
            journal.roll_back(session, rec)
        except OSError:
            return SessionError(f"commit failed: {reason}; the lower is unchanged; the journal "
                                f"{path} will be rolled back by the next astrid-fs command")
        return SessionError(f"commit failed: {reason}; nothing was changed")
    tell_mount(mount, None)
    return SessionError(f"commit interrupted: {reason}; the journal {path} will be finished "
                        "by the next astrid-fs command")


def finish_interrupted(session: Session, on_wait: Callable[[str], None] | None = None,
                       mount: MountLink | None = None) -> list[str]:
    """Recover interrupted commits (the session lock held by the caller;
    the project's commit lock is taken here when there is one to finish);
    lines to report."""
    if not journal.pending(session):
        return _recover(session, UNMOUNTED)  # (only orphan ops files to drop)
    link = link_for(session, mount)
    with project_locked(commit_sources(session), astrid_home(), on_wait):
        return _recover(session, link)


def _recover(session: Session, mount: MountLink) -> list[str]:
    done = journal.recover(session, mount=mount)
    lines = [f"{what} interrupted commit {rec.txid}" for what, rec in done]
    if done:
        warning = tell_mount(mount, None)
        lines += [warning] if warning else []
    return lines


