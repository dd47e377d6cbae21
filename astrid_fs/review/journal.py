"""The commit write-ahead journal: one JSON record per commit in the
session's `journal/`, and the code that carries a record through its states.
Design, invariants and crash states: docs/design/journal.md.

States, each entered by an atomic durable rewrite of the record:

  prepared  -> entries are being copied into the staging dir (in the lower
               fs). The lower tree is untouched. Recovery ROLLS BACK: delete
               the staging dir and the record.
  vacating  -> the commit point. Lower entries that go away (deleted, rename
               sources, replaced types) move into the staging dir. Each step
               is a rename guarded by "slot absent and source present", and
               nothing is placed in this state, so replay is idempotent.
  placing   -> staged entries and vacated rename sources move into their
               final places (guarded by "slot still in staging"), new dirs
               are made, hard links made, dir metadata set.
  cleaning  -> the lower is final. Committed entries leave the upper (only
               if unchanged since planning), the staging dir is removed.
               Then the record is deleted.

Recovery (`recover`) runs at the start of every review verb: it finishes
every record past `prepared` and rolls back the others.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from dataclasses import replace
from typing import Any

from astrid_fs.durable import fsync_dir, sync_fs
from astrid_fs.errors import SessionError
from astrid_fs.overlay.layers import lstat_or_none
from astrid_fs.overlay.whiteout import Origin, OverlayXattrs, get_redirect, is_opaque
from astrid_fs.review.entrycopy import clone_or_copy, copy_entry, copy_meta
from astrid_fs.review.landed import rebase_landed
from astrid_fs.review.lowers import SessionLowers
from astrid_fs.review.mountlink import UNMOUNTED, MountLink
from astrid_fs.review.records import (
    Cleanup,
    DirMeta,
    Place,
    Record,
    Stage,
    State,
    Vacate,
    forget,
    load,
    ops_path,
    pending,
    record_path,
    save,
    save_ops,
)
from astrid_fs.review.remote_commit import apply_op
from astrid_fs.review.steps import CRASH_ENV, CRASH_EXIT, FAIL_ENV, BusyError, Steps, locked
from astrid_fs.session import Session

__all__ = [  # (the journal's records and steps are used through this module)
    "CRASH_ENV", "CRASH_EXIT", "FAIL_ENV", "BusyError", "Cleanup", "DirMeta", "Place",
    "Record", "Stage", "State", "Steps", "Vacate", "advance", "forget", "load", "locked",
    "ops_path", "pending", "prune_dir", "record_path", "recover", "roll_back", "run", "save",
    "save_ops", "sync_fs",
]


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _private_filter(names: OverlayXattrs) -> Any:
    return lambda k: not (names.is_private(k) or k.startswith("trusted.overlay."))


def advance(session: Session, rec: Record, state: State, steps: Steps) -> Record:
    rec = replace(rec, state=state)
    save(session, rec)
    steps.step()
    return rec


def run(session: Session, rec: Record, steps: Steps, mount: MountLink = UNMOUNTED) -> None:
    """Carry `rec` from its state to the end. A record in `prepared` is staged
    here (only by the commit that wrote it; recovery rolls those back).
    `mount`: the session's mount, whose held upper files stay (cleaning)."""
    lower = str(session.lower)
    if rec.state == "prepared":
        _stage(session, rec, steps)
        rec = advance(session, rec, "vacating", steps)
    if rec.state == "vacating":
        _vacate(lower, rec, steps)
        rec = advance(session, rec, "placing", steps)
    if rec.state == "placing":
        _place(session, rec, steps)
        sync_fs(lower)
        steps.step()
        rec = advance(session, rec, "cleaning", steps)
    _clean(session, rec, steps, mount)


def _stage(session: Session, rec: Record, steps: Steps) -> None:
    keep = _private_filter(session.xattrs)
    os.mkdir(rec.staging, 0o700)
    steps.step()
    for st in rec.stage:
        src, dst = os.path.join(session.upper, st.path), os.path.join(rec.staging, st.slot)
        if st.link:
            os.link(src, dst)
        else:
            copy_entry(src, dst, keep)
        steps.step()
    sync_fs(rec.staging)
    steps.step()


def _vacate(lower: str, rec: Record, steps: Steps) -> None:
    for v in rec.vacate:
        slot = os.path.join(rec.staging, v.slot)
        src = os.path.join(lower, v.path)
        if not _exists(slot) and _exists(src):
            os.rename(src, slot)
            steps.step()


def _place(session: Session, rec: Record, steps: Steps) -> None:
    lower = str(session.lower)
    for p in rec.place:
        to = os.path.join(lower, p.to)
        slot = os.path.join(rec.staging, p.slot) if p.slot else ""
        if p.op in ("move", "put"):
            if not _exists(slot):
                continue
            _rename_in(slot, to)
        elif p.op == "mkdir":
            if os.path.isdir(to) and not os.path.islink(to):
                continue
            os.mkdir(to, 0o700)
        else:
            src = os.path.join(lower, p.source)
            if _exists(to) and os.lstat(to).st_ino == os.lstat(src).st_ino:
                continue
            if not _exists(slot):
                os.link(src, slot)
            os.rename(slot, to)
        steps.step()
    linked = {st.slot for st in rec.stage if st.link}
    for p in rec.place:
        if p.slot in linked:  # the inode came from the upper: drop the overlay's xattrs
            _strip_private(os.path.join(lower, p.to), session.xattrs)
    for meta in rec.dirmeta:
        with contextlib.suppress(FileNotFoundError):  # (planning refuses that; never wedge)
            _apply_dirmeta(os.path.join(lower, meta.path), meta, session.xattrs)
        steps.step()
    if rec.remote:
        lowers = SessionLowers.open(session.root, session.lower)
        try:
            for op in rec.remote:
                apply_op(session, lowers, op)
                steps.step()
        finally:
            lowers.close()


def _rename_in(slot: str, to: str) -> None:
    """rename(slot, to); across filesystems (a mount inside the lower), copy
    next to `to` with fsync, then rename there."""
    try:
        os.rename(slot, to)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    tmp = f"{to}.astrid-tmp"
    if _exists(tmp):
        os.unlink(tmp)
    st = os.lstat(slot)
    if stat.S_ISREG(st.st_mode):
        clone_or_copy(slot, tmp)
        copy_meta(slot, tmp, st)
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    else:
        copy_entry(slot, tmp)
    os.rename(tmp, to)
    fsync_dir(os.path.dirname(to))
    os.unlink(slot)


def _strip_private(path: str, names: OverlayXattrs) -> None:
    try:
        keys = os.listxattr(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    for key in keys:
        if names.is_private(key) or key.startswith("trusted.overlay."):
            with contextlib.suppress(OSError):
                os.removexattr(path, key, follow_symlinks=False)


def _apply_dirmeta(path: str, meta: DirMeta, names: OverlayXattrs) -> None:
    want = {k: bytes.fromhex(v) for k, v in meta.xattrs.items()}
    for key in os.listxattr(path, follow_symlinks=False):
        if not names.is_private(key) and not key.startswith("trusted.overlay.") \
                and key not in want:
            os.removexattr(path, key, follow_symlinks=False)
    for key, value in want.items():
        os.setxattr(path, key, value, follow_symlinks=False)
    if os.geteuid() == 0:
        os.chown(path, meta.uid, meta.gid)
    os.chmod(path, meta.mode)
    os.utime(path, ns=(meta.mtime_ns, meta.mtime_ns))


def _repoint_siblings(session: Session, rel: str, path: str, st: os.stat_result,
                      names: OverlayXattrs) -> None:
    """A landed upper file with other names in the session (a hard link):
    they are the same inode, so their content is now the lower's `rel`, and
    that is their base from now on. Its origin (one xattr of the inode)
    still named the lower entry it was copied from, which the landing may
    have moved away (`ln z d3; mv z x; commit d3` moved z to d3: x then read
    as a conflict with a deleted z). Idempotent: recovery replays it. Not
    where the landing moved the inode itself into the lower (an unmounted
    same-fs commit): the xattr would then be written on the project's file."""
    lst = lstat_or_none(os.path.join(session.lower, rel))
    if lst is None or not stat.S_ISREG(lst.st_mode) or lst.st_ino == st.st_ino:
        return
    with contextlib.suppress(OSError):
        os.setxattr(path, names.origin, Origin.of_stat(rel, lst).encode(),
                    follow_symlinks=False)


def _clean(session: Session, rec: Record, steps: Steps, mount: MountLink) -> None:
    upper = str(session.upper)
    names = session.xattrs
    # Files the mount's kernel writes through passthrough stay (equal to the
    # lower now): removing them would orphan those writes.
    held = mount.held_upper_inodes()
    for c in rec.cleanup:
        path = os.path.join(upper, c.path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if c.is_dir:
            for key in c.strip:
                with contextlib.suppress(OSError):
                    os.removexattr(path, key, follow_symlinks=False)
            if not c.remote:
                prune_dir(session, c.path, names)
            elif not os.listdir(path) and not is_opaque(path, names):
                os.rmdir(path)
        elif (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode) == (
                c.ino, c.mtime_ns, c.size, c.mode) and st.st_ino not in held:
            if st.st_nlink > 1 and not c.remote:
                _repoint_siblings(session, c.path, path, st, names)
            os.unlink(path)
        steps.step()
    shutil.rmtree(rec.staging, ignore_errors=True)
    rebase_landed(session, rec)
    sync_fs(upper)
    steps.step()
    forget(session, rec.txid)


def prune_dir(session: Session, rel: str, names: OverlayXattrs) -> None:
    """Remove an empty plain upper dir that adds nothing over its lower dir."""
    up = os.path.join(session.upper, rel)
    low = os.path.join(session.lower, rel)
    try:
        ust, lst = os.lstat(up), os.lstat(low)
    except FileNotFoundError:
        return
    if not (stat.S_ISDIR(ust.st_mode) and stat.S_ISDIR(lst.st_mode)):
        return
    if os.listdir(up) or is_opaque(up, names) or get_redirect(up, names) is not None:
        return
    if (ust.st_mode, ust.st_uid, ust.st_gid) != (lst.st_mode, lst.st_uid, lst.st_gid):
        return
    keep = _private_filter(names)
    if {k for k in os.listxattr(up, follow_symlinks=False) if keep(k)} != {
            k for k in os.listxattr(low, follow_symlinks=False) if keep(k)}:
        return
    with contextlib.suppress(OSError):
        os.rmdir(up)


def roll_back(session: Session, rec: Record) -> None:
    """Undo a record still in `prepared`: the lower was never touched."""
    shutil.rmtree(rec.staging, ignore_errors=True)
    forget(session, rec.txid)


def recover(session: Session, steps: Steps | None = None,
            mount: MountLink = UNMOUNTED) -> list[tuple[str, Record]]:
    """Finish or roll back every interrupted commit of `session`; returns
    what was done ("finished" / "rolled back", record)."""
    done: list[tuple[str, Record]] = []
    for orphan in session.journal_dir.glob("ops-*.json"):  # died before its first state
        if not record_path(session, orphan.name[len("ops-"):-len(".json")]).exists():
            orphan.unlink()
    for rec in pending(session):
        if rec.state == "prepared":
            roll_back(session, rec)
            done.append(("rolled back", rec))
            continue
        if not session.lower.is_dir():
            raise SessionError(
                f"session {session.name}: an interrupted commit needs lower "
                f"{session.lower}, which is gone; restore it and run astrid-fs again")
        try:
            run(session, rec, steps or Steps(), mount)
        except OSError as e:
            raise SessionError(
                f"session {session.name}: cannot finish interrupted commit {rec.txid}: "
                f"{e.strerror or e}; its journal is kept, run astrid-fs again once "
                "that is fixed") from e
        done.append(("finished", rec))
    return done
