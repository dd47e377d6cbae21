"""Snapshots of a session's upper layer, and rollback to one.

A snapshot is `snapshots/NNNN/` holding `tree/` (the upper layer, exactly:
whiteouts, opaque and redirect xattrs, origin, modes, owners, times, hard
links), `manifest.json` (for each upper non-dir: inode, ctime, size at
snapshot time) and `meta.json` (number, name, time, change count). It is
built in `snapshots/.tmp-NNNN` and renamed into place, so it exists whole
or not at all.

Sharing, and why a snapshot never changes: the mount writes upper files in
place, so a snapshot must never share an inode with the live upper. Each
upper file is either hard-linked to the previous snapshot's copy (when its
inode and ctime are the same as then: neither data nor metadata moved) or
reflinked/copied (FICLONE where the fs shares extents, a kernel copy
otherwise). Snapshot inodes are shared only among snapshots, which nothing
writes. Rollback copies back out the same way; it is journaled by
`journal/rollback.json` so an interrupted rollback is finished by the next
astrid-fs command. See docs/design/journal.md, "Snapshots".
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from astrid_fs.durable import fsync_dir, write_atomic
from astrid_fs.errors import SessionError, UsageError
from astrid_fs.review import basecontent, journal
from astrid_fs.review.changes import drop_landed_redirects, scan
from astrid_fs.review.commit import finish_interrupted
from astrid_fs.review.entrycopy import clone_or_copy, copy_entry, copy_meta, copy_tree
from astrid_fs.review.mountlink import MountLink, link_for
from astrid_fs.session import Session

Signature = tuple[int, int, int]  # ino, ctime_ns, size


@dataclass(frozen=True)
class SnapshotInfo:
    number: int
    name: str
    created: str
    changes: int
    entries: int
    copied: int  # files whose data was copied or reflinked (the rest: hard links)
    reason: str = ""  # set on the automatic snapshot a destructive verb takes first

    @property
    def auto(self) -> bool:
        return bool(self.reason)

    @property
    def dirname(self) -> str:
        return f"{self.number:04d}"


def _signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_ctime_ns, st.st_size)


def list_snapshots(session: Session) -> list[SnapshotInfo]:
    """Every complete snapshot of `session`, oldest first."""
    found = []
    base = session.snapshots_dir
    if not base.is_dir():
        return []
    for entry in sorted(base.iterdir()):
        meta = entry / "meta.json"
        if entry.name.isdigit() and meta.is_file():
            found.append(SnapshotInfo(**json.loads(meta.read_text())))
    return found


def find_snapshot(session: Session, key: str) -> SnapshotInfo:
    """The snapshot numbered or named `key`, or UsageError."""
    snaps = list_snapshots(session)
    for snap in snaps:
        if (key.isdigit() and snap.number == int(key)) or snap.name == key:
            return snap
    known = ", ".join(f"{s.number}" + (f" ({s.name})" if s.name else "") for s in snaps)
    raise UsageError(f"session {session.name} has no snapshot {key!r}"
                     + (f"; it has {known}" if known else "; it has none"))


class _Builder:
    def __init__(self, prev_tree: Path | None, prev_manifest: dict[str, Signature],
                 steps: journal.Steps) -> None:
        self.steps = steps
        self.prev_tree = prev_tree
        self.prev = prev_manifest
        self.manifest: dict[str, Signature] = {}
        self.links: dict[int, str] = {}
        self.entries = 0
        self.copied = 0

    def copy(self, upper: str, dst: str, rel: str) -> None:
        st = os.lstat(upper if not rel else os.path.join(upper, rel))
        src = os.path.join(upper, rel) if rel else upper
        out = os.path.join(dst, rel) if rel else dst
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(out, 0o700)
            with os.scandir(src) as it:
                names = sorted(e.name for e in it)
            for name in names:
                self.copy(upper, dst, f"{rel}/{name}" if rel else name)
            copy_meta(src, out, st)
            return
        self.entries += 1
        self.steps.step()
        sig = _signature(st)
        self.manifest[rel] = sig
        if st.st_nlink > 1 and st.st_ino in self.links:
            os.link(self.links[st.st_ino], out)
            return
        if (self.prev_tree is not None and self.prev.get(rel) == sig
                and os.path.lexists(self.prev_tree / rel)):
            os.link(self.prev_tree / rel, out)
        elif stat.S_ISREG(st.st_mode):
            clone_or_copy(src, out)
            copy_meta(src, out, st)
            self.copied += 1
        else:
            copy_entry(src, out)
        if st.st_nlink > 1:
            self.links[st.st_ino] = out


def _manifest(session: Session, snap: SnapshotInfo) -> dict[str, Signature]:
    path = session.snapshots_dir / snap.dirname / "manifest.json"
    raw: dict[str, list[int]] = json.loads(path.read_text())
    return {k: (v[0], v[1], v[2]) for k, v in raw.items()}


def snapshot(session: Session, name: str = "", steps: journal.Steps | None = None,
             mount: MountLink | None = None) -> SnapshotInfo:
    """Record the upper layer as it is now; returns the new snapshot.
    `mount`: the session's mount (mountlink.py), flushed first."""
    if name and (name.isdigit() or "/" in name):
        raise UsageError(f"snapshot name {name!r} must not be a number or contain '/'")
    link = link_for(session, mount)
    with journal.locked(session):
        finish_interrupted(session, mount=link)
        finish_rollback(session, link)
        return take_snapshot(session, name, steps=steps, mount=link)


def take_snapshot(session: Session, name: str = "", reason: str = "",
                  steps: journal.Steps | None = None,
                  mount: MountLink | None = None) -> SnapshotInfo:
    """`snapshot` with the session lock held by the caller; `reason` marks
    the automatic snapshot a destructive verb takes before it acts. `steps`
    counts each entry copied (crash tests); a crash leaves `.tmp-N`, which
    the next command removes: the snapshot exists whole or not at all.
    Takes the upper only: a mounted source's base is not waited for (the
    recorder snapshots after every event that changed files)."""
    link_for(session, mount).sync(bases=False)
    snaps = list_snapshots(session)
    if name and any(s.name == name for s in snaps):
        raise UsageError(f"session {session.name} already has a snapshot named {name!r}")
    prev = snaps[-1] if snaps else None
    number = prev.number + 1 if prev else 1
    session.snapshots_dir.mkdir(exist_ok=True)
    tmp = session.snapshots_dir / f".tmp-{number:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    builder = _Builder(
        None if prev is None else session.snapshots_dir / prev.dirname / "tree",
        {} if prev is None else _manifest(session, prev), steps or journal.Steps())
    builder.copy(str(session.upper), str(tmp / "tree"), "")
    count = len(scan(session.upper, session.lower, session.xattrs)) \
        if session.lower.is_dir() else builder.entries
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    info = SnapshotInfo(number, name, created, count, builder.entries, builder.copied, reason)
    (tmp / "manifest.json").write_text(json.dumps(builder.manifest))
    (tmp / "meta.json").write_text(json.dumps(asdict(info)))
    journal.sync_fs(tmp)
    builder.steps.step()
    os.rename(tmp, session.snapshots_dir / info.dirname)
    fsync_dir(session.snapshots_dir)
    return info


def snapshot_dir(session: Session, snap: SnapshotInfo) -> Path:
    return session.snapshots_dir / snap.dirname


def _rollback_record(session: Session) -> Path:
    return session.journal_dir / "rollback.json"


def rollback(session: Session, key: str, steps: journal.Steps | None = None,
             why: str = "", mount: MountLink | None = None) -> SnapshotInfo:
    """Make the upper layer exactly what snapshot `key` recorded, after an
    automatic snapshot of the changes as they are (so `undo` brings them
    back). `mount`: the session's mount (mountlink.py), told afterwards."""
    steps = steps or journal.Steps.from_env()
    link = link_for(session, mount)
    with journal.locked(session):
        finish_interrupted(session, mount=link)
        finish_rollback(session, link)
        snap = find_snapshot(session, key)
        take_snapshot(session, reason=why or f"before rollback to {snap.number}", mount=link)
        write_atomic(_rollback_record(session), json.dumps({"snapshot": snap.number}).encode())
        steps.step()
        _restore(session, snap, steps, link)
        return snap


def finish_rollback(session: Session, mount: MountLink | None = None) -> None:
    """Finish a rollback that was interrupted and drop a snapshot that was
    being taken when a crash came (journal lock held by the caller)."""
    if session.snapshots_dir.is_dir():
        for partial in session.snapshots_dir.glob(".tmp-*"):
            shutil.rmtree(partial, ignore_errors=True)
    record = _rollback_record(session)
    if record.exists():
        number = json.loads(record.read_text())["snapshot"]
        _restore(session, find_snapshot(session, str(number)), journal.Steps(),
                 link_for(session, mount))


def _restore(session: Session, snap: SnapshotInfo, steps: journal.Steps,
             mount: MountLink) -> None:
    tree = session.snapshots_dir / snap.dirname / "tree"
    if not tree.is_dir():
        raise SessionError(f"snapshot {snap.number} of session {session.name} is damaged "
                           f"(no {tree})")
    session.tmp.mkdir(parents=True, exist_ok=True)
    for left in session.tmp.glob("rollback-*"):  # from an interrupted rollback
        _remove(str(left))
    restorer = _Restorer(session, _manifest(session, snap), steps)
    restorer.sync_dir(str(tree), str(session.upper), "")
    if session.lower.is_dir():
        # A rollback across a commit brings back renames the lower has made.
        drop_landed_redirects(str(session.upper), str(session.lower), session.xattrs)
        # The base content of what the snapshot no longer changes goes.
        changes = scan(session.upper, session.lower, session.xattrs)
        basecontent.prune(session, {p for c in changes for p in (c.path, c.lower_path) if p})
    journal.sync_fs(session.upper)
    _rollback_record(session).unlink(missing_ok=True)
    fsync_dir(session.journal_dir)
    mount.changed(None)


class _Restorer:
    def __init__(self, session: Session, manifest: dict[str, Signature],
                 steps: journal.Steps) -> None:
        self.session = session
        self.steps = steps
        self.manifest = manifest
        self.links: dict[int, str] = {}
        self.counter = 0

    def tmp(self) -> str:
        self.counter += 1
        return os.path.join(self.session.tmp, f"rollback-{os.getpid()}-{self.counter}")

    def sync_dir(self, snap: str, live: str, rel: str) -> None:
        """Make live dir `live` hold exactly what snapshot dir `snap` holds."""
        want = sorted(os.listdir(snap))
        for name in sorted(set(os.listdir(live)) - set(want)):
            _remove(os.path.join(live, name))
        for name in want:
            self.sync_entry(os.path.join(snap, name), os.path.join(live, name),
                            f"{rel}/{name}" if rel else name)
            self.steps.step()
        copy_meta(snap, live, os.lstat(snap))

    def sync_entry(self, snap: str, live: str, rel: str) -> None:
        sst = os.lstat(snap)
        try:
            lst: os.stat_result | None = os.lstat(live)
        except FileNotFoundError:
            lst = None
        if stat.S_ISDIR(sst.st_mode):
            if lst is not None and stat.S_ISDIR(lst.st_mode):
                self.sync_dir(snap, live, rel)
                return
            tmp = self.tmp()
            copy_tree(snap, tmp)
            _replace(tmp, live, lst)
            return
        if sst.st_nlink > 1 and sst.st_ino in self.links:
            tmp = self.tmp()
            os.link(self.links[sst.st_ino], tmp)
            _replace(tmp, live, lst)
            return
        unchanged = (lst is not None and not stat.S_ISDIR(lst.st_mode)
                     and self.manifest.get(rel) == _signature(lst))
        if not unchanged:
            tmp = self.tmp()
            copy_entry(snap, tmp)
            _replace(tmp, live, lst)
        if sst.st_nlink > 1:
            self.links[sst.st_ino] = live


def _replace(tmp: str, live: str, lst: os.stat_result | None) -> None:
    if lst is not None and stat.S_ISDIR(lst.st_mode):
        shutil.rmtree(live)
    os.rename(tmp, live)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def undo_target(session: Session) -> SnapshotInfo:
    """The newest automatic snapshot: what the last destructive verb
    (rollback, discard, commit --force, undo itself) replaced."""
    autos = [s for s in list_snapshots(session) if s.auto]
    if not autos:
        raise UsageError(f"session {session.name} has nothing to undo (no automatic snapshot; "
                         "see `astrid-fs log`)")
    return autos[-1]


def undo(session: Session, mount: MountLink | None = None) -> SnapshotInfo:
    """Roll back to the newest automatic snapshot (git's `reset HEAD@{1}`);
    it takes its own, so a second undo redoes. Undoing a forced commit also
    puts the project's versions it overwrote back into the session, as
    changes: `commit` then restores them in the project."""
    target = undo_target(session)
    link = link_for(session, mount)
    snap = rollback(session, str(target.number), why=f"before undo (to {target.number})",
                    mount=link)
    listed = snapshot_dir(session, target) / "overwritten.json"
    if listed.exists():
        with journal.locked(session):
            restored = restore_overwritten(session, target, json.loads(listed.read_text()))
        link.changed(restored)
    return snap


def restore_overwritten(session: Session, snap: SnapshotInfo, paths: list[str]) -> list[str]:
    """Place the project versions a forced commit overwrote (kept in `snap`)
    in the upper, each replacing the session's entry there; a path the
    project did not have is deleted in the session instead."""
    kept = snapshot_dir(session, snap) / "overwritten"
    session.tmp.mkdir(parents=True, exist_ok=True)
    for path in paths:
        live = session.upper / path
        live.parent.mkdir(parents=True, exist_ok=True)
        src = kept / path
        if not os.path.lexists(src):
            continue
        tmp = session.tmp / f"undo-{os.getpid()}"
        if os.path.lexists(tmp):
            _remove(str(tmp))
        copy_tree(str(src), str(tmp))
        lst = os.lstat(live) if os.path.lexists(live) else None
        _replace(str(tmp), str(live), lst)
    journal.sync_fs(session.upper)
    return paths


def describe(snaps: list[SnapshotInfo]) -> str:
    lines = [f"{s.number:>4}  {s.created}  {s.changes:>6} changes  "
             f"{s.name or (f'(auto: {s.reason})' if s.reason else '')}".rstrip()
             for s in snaps]
    return "".join(line + "\n" for line in lines)

