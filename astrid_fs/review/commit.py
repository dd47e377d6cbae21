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
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from astrid_fs.drivers.errors import DriverError
from astrid_fs.durable import write_atomic
from astrid_fs.errors import ConflictError, MountError, SessionError
from astrid_fs.fuse import control
from astrid_fs.overlay.layers import COMMIT_STAGING_PREFIX
from astrid_fs.overlay.remote import SESSION_TABLE
from astrid_fs.overlay.whiteout import is_opaque
from astrid_fs.review import journal
from astrid_fs.review.bases import open_index
from astrid_fs.review.changes import Change, scan, user_xattrs
from astrid_fs.review.conflicts import check_conflicts, check_markers
from astrid_fs.review.entrycopy import copy_tree
from astrid_fs.review.journal import Cleanup, DirMeta, Place, Record, Stage, Steps, Vacate
from astrid_fs.review.lowers import SessionLowers
from astrid_fs.review.projectlock import project_locked
from astrid_fs.review.remote_commit import RemoteOp, mount_points, plan_ops, scan_remote
from astrid_fs.review.selection import is_under, normalize_path, select
from astrid_fs.session import Session, astrid_home

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


def session_changes(session: Session) -> list[Change]:
    """Every change of `session`, with conflicts marked. Flushes a mount first."""
    control.sync(session)
    check_lower_usable(session)
    local = scan(session.upper, session.lower, session.xattrs)
    index = open_index(session.root)
    lowers = open_lowers(session)
    try:
        if lowers is None:
            found = check_conflicts(local, session.lower, index)
        else:
            # the upper dirs holding mount points (`mnt` for /mnt/s3) are no change
            local = split_remote(local, mount_points(lowers))[0]
            remote = scan_remote(session, lowers, index)
            found = sorted(check_conflicts(local, session.lower, index) + remote,
                           key=lambda c: c.path)
        return check_markers(found, session.root, session.upper)
    finally:
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


class _Planner:
    """Builds one journal record from the selected changes."""

    def __init__(self, session: Session, everything: list[Change], chosen: list[Change],
                 txid: str) -> None:
        self.session = session
        self.upper = str(session.upper)
        self.chosen = chosen
        self.chosen_paths = {c.path for c in chosen if c.status != "D"}
        self.txid = txid
        self.stage: list[Stage] = []
        self.vacate: list[Vacate] = []
        self.place: list[Place] = []
        self.dirmeta: list[DirMeta] = []
        self.cleanup: list[Cleanup] = []
        self.slots = 0
        state = session.mount_state()
        mounted = state is not None and state.alive()
        # Hard-link staging is safe only while nothing can write the upper in
        # place (no mount) and only within one filesystem.
        self.link_ok = not mounted and (
            os.stat(session.upper).st_dev == os.stat(session.lower).st_dev)
        lowers = open_lowers(session)
        self.points: list[str] = []
        if lowers is not None:
            self.points = mount_points(lowers)
            lowers.close()
        picked = {id(c) for c in chosen}
        # Opaque dirs still hiding a lower entry after this commit keep their
        # upper children (removing them would hide the committed copies).
        hidden_left = {_parent(c.path) for c in everything
                       if c.status == "D" and not c.whiteout and id(c) not in picked}
        self.kept_opaque = {d for d in hidden_left
                            if is_opaque(os.path.join(self.upper, d), session.xattrs)}

    def slot(self, prefix: str) -> str:
        self.slots += 1
        return f"{prefix}{self.slots}"

    def under_kept_opaque(self, path: str) -> bool:
        parts = path.split("/")
        return any("/".join(parts[:i]) in self.kept_opaque for i in range(1, len(parts) + 1))

    def clean_entry(self, path: str) -> bool:
        """Plan removing upper `path` after the commit; False if it stays."""
        if self.under_kept_opaque(path):
            return False
        st = os.lstat(os.path.join(self.upper, path))
        self.cleanup.append(Cleanup(path, False, st.st_ino, st.st_mtime_ns, st.st_size,
                                    st.st_mode))
        return True

    def clean_dir(self, path: str) -> None:
        if self.under_kept_opaque(path) and path not in self.kept_opaque:
            return
        names = self.session.xattrs
        strip = (names.redirect,) if path in self.kept_opaque else (names.redirect, names.opaque)
        remote = any(is_under(path, p) for p in self.points)
        self.cleanup.append(Cleanup(path, True, strip=strip, remote=remote))

    def add(self, c: Change) -> None:
        if any(is_under(c.path, p) for p in self.points):  # written back by a driver
            if c.kind == "dir" and c.status != "D":
                self.clean_dir(c.path)
            elif c.status != "D" or c.whiteout:
                self.clean_entry(c.path)
            if c.source_whiteout is not None:
                self.clean_entry(c.source_whiteout)
            return
        if c.status == "D":
            self.vacate.append(Vacate(c.lower_path or c.path, self.slot("v")))
            if c.whiteout:
                self.clean_entry(c.path)
            return
        if c.status in ("T", "R") and c.lower_path is not None:
            if c.status == "R" and c.kind == "dir" and not os.path.isdir(
                    self.session.lower / c.lower_path):
                raise SessionError(
                    f"cannot commit {c.path}/: it renames {c.lower_path}, which is no longer "
                    "in the project (not even --force can rename what is gone); discard it "
                    "or roll back to another snapshot; nothing was changed")
            slot = self.slot("v")
            self.vacate.append(Vacate(c.lower_path, slot))
            # A renamed dir, or a renamed file that changed in nothing else,
            # is renamed in the lower: it keeps its inode (and its children).
            if c.status == "R" and (c.kind == "dir" or not c.flags):
                self.place.append(Place("move", c.path, slot))
                if c.kind != "dir":
                    self.clean_entry(c.path)
                    if c.source_whiteout is not None:
                        self.clean_entry(c.source_whiteout)
                    return
        if c.source_whiteout is not None:
            self.clean_entry(c.source_whiteout)
        if c.kind == "dir":
            if c.status in ("A", "T"):
                self.place.append(Place("mkdir", c.path))
            self.dirmeta.append(self.dir_meta(c.path))
            self.clean_dir(c.path)
            return
        leaves = self.clean_entry(c.path)
        if c.link_to is not None and c.link_to in self.chosen_paths:
            self.place.append(Place("link", c.path, self.slot("l"), c.link_to))
        else:
            slot = self.slot("s")
            # Link only an inode the upper gives up entirely (one name, which
            # leaves): a remaining upper name would write through to the lower.
            link = (self.link_ok and leaves and c.kind == "file"
                    and os.lstat(os.path.join(self.upper, c.path)).st_nlink == 1)
            self.stage.append(Stage(c.path, slot, link))
            self.place.append(Place("put", c.path, slot))

    def check_same_fs(self) -> None:
        """Vacating is a rename into the staging dir: refuse, before anything
        is written, an entry on another filesystem mounted inside the lower."""
        dev = os.stat(self.session.lower).st_dev
        for v in self.vacate:
            try:
                st = os.lstat(self.session.lower / v.path)
            except FileNotFoundError:
                continue
            if st.st_dev != dev or os.path.ismount(self.session.lower / v.path):
                raise SessionError(
                    f"cannot commit the removal of {v.path}: it is on another filesystem "
                    f"than the lower {self.session.lower}; nothing was changed")

    def dir_meta(self, path: str) -> DirMeta:
        full = os.path.join(self.upper, path)
        st = os.lstat(full)
        xattrs = {k: v.hex() for k, v in user_xattrs(full, self.session.xattrs).items()}
        return DirMeta(path, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                       st.st_mtime_ns, xattrs)

    def record(self) -> Record:
        for c in self.chosen:
            self.add(c)
        cleaned = {x.path for x in self.cleanup if x.is_dir}
        ancestors: set[str] = set()
        for c in self.chosen:
            parent = _parent(c.path)
            while parent:
                ancestors.add(parent)
                parent = _parent(parent)
        for parent in sorted(ancestors - cleaned):
            if os.path.isdir(os.path.join(self.upper, parent)):
                self.clean_dir(parent)
        touched = {c.path for c in self.chosen} | {
            c.lower_path for c in self.chosen if c.lower_path is not None}
        self.check_same_fs()
        staging = str(self.session.lower / f"{COMMIT_STAGING_PREFIX.decode()}{self.txid}")
        return Record(
            txid=self.txid, state="prepared", staging=staging,
            stage=tuple(self.stage),
            vacate=tuple(sorted(self.vacate, key=lambda v: (-_depth(v.path), v.path))),
            place=tuple(sorted(self.place, key=lambda p: (p.op == "link", _depth(p.to), p.to))),
            dirmeta=tuple(sorted(self.dirmeta, key=lambda d: (-_depth(d.path), d.path))),
            cleanup=tuple(sorted(self.cleanup, key=lambda x: (-_depth(x.path), x.path))),
            paths=tuple(sorted(touched)),
        )


def plan(session: Session, everything: list[Change], chosen: list[Change]) -> Record:
    """The journal record that lands `chosen` (a selection of `everything`)."""
    txid = f"{time.time_ns():x}-{os.getpid()}"
    return _Planner(session, everything, chosen, txid).record()


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
           on_wait: Callable[[str], None] | None = None) -> CommitResult:
    """Land the changes under `paths` (all if empty) in the lower layer.

    Holds the session's lock and the commit lock of its project(s), so a
    second commit to the same project (from any session) waits, then sees
    what this one landed as conflicts. `on_wait(project)` is called first
    when it has to wait."""
    if session.stack:
        # Landing in a stack would mean writing overlay whiteouts into a
        # lower that is itself an upper: not built; refuse before anything.
        raise SessionError(f"session {session.name} stacks {len(session.stack) + 1} lower "
                           "layers; commit lands in a single lower only (commit the "
                           "session beneath first, then re-stack)")
    steps = steps or Steps.from_env()
    with journal.locked(session), project_locked(
            commit_sources(session), astrid_home(), on_wait):
        _recover(session)
        return _commit_locked(session, paths, force, dry_run, steps)


def _commit_locked(session: Session, paths: list[str], force: bool, dry_run: bool,
                   steps: Steps) -> CommitResult:
    everything = session_changes(session)
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
    kept = keep_overwritten(session, conflicts) if conflicts else None
    steps.expect(rec)
    journal.save_ops(session, rec)
    journal.save(session, rec)
    try:
        steps.step()
        journal.run(session, rec, steps)
    except (OSError, DriverError) as e:
        raise _failed(session, rec, e) from e
    warning = tell_mount(session, rec.paths)
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


def tell_mount(session: Session, paths: tuple[str, ...] | None) -> str | None:
    """Ask a mounted session's daemon to drop what it cached of `paths`
    after they landed. The commit is done whatever the daemon answers: a
    failure here is a warning (the mount may show old data), never an error."""
    try:
        control.notify_changed(session, paths)
    except MountError as e:
        return (f"committed, but the mount was not told ({e}); it may show old data "
                "until it is remounted")
    return None


def keep_overwritten(session: Session, conflicts: list[Change]) -> Path:
    """Before a forced commit: an automatic snapshot of the session (`undo`)
    holding, under `overwritten/`, a copy of every project entry the commit
    is about to overwrite or delete. Returns that dir."""
    # Imported here: snapshot.py builds on this module (finish_interrupted).
    from astrid_fs.review.snapshot import snapshot_dir, take_snapshot

    snap = take_snapshot(session, reason=f"before commit --force over {len(conflicts)} "
                         "conflict(s)")
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


def _failed(session: Session, rec: Record, err: OSError | DriverError) -> SessionError:
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
    tell_mount(session, None)
    return SessionError(f"commit interrupted: {reason}; the journal {path} will be finished "
                        "by the next astrid-fs command")


def finish_interrupted(session: Session,
                       on_wait: Callable[[str], None] | None = None) -> list[str]:
    """Recover interrupted commits (the session lock held by the caller;
    the project's commit lock is taken here when there is one to finish);
    lines to report."""
    if not journal.pending(session):
        return _recover(session)
    with project_locked(commit_sources(session), astrid_home(), on_wait):
        return _recover(session)


def _recover(session: Session) -> list[str]:
    done = journal.recover(session)
    lines = [f"{what} interrupted commit {rec.txid}" for what, rec in done]
    if done:
        warning = tell_mount(session, None)
        lines += [warning] if warning else []
    return lines


def describe(rec: Record) -> str:
    """The plan of a record, one line per step (for --dry-run)."""
    lines = [f"remove {v.path}" for v in rec.vacate if not any(
        p.slot == v.slot for p in rec.place)]
    for p in rec.place:
        if p.op == "move":
            src = next(v.path for v in rec.vacate if v.slot == p.slot)
            lines.append(f"rename {src} -> {p.to}")
        elif p.op == "put":
            lines.append(f"write {p.to}")
        elif p.op == "mkdir":
            lines.append(f"mkdir {p.to}")
        else:
            lines.append(f"link {p.source} -> {p.to}")
    lines += [f"set metadata {d.path}/" for d in rec.dirmeta]
    return "".join(line + "\n" for line in lines)
