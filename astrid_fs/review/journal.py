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
import ctypes
import errno
import fcntl
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from astrid_fs.drivers.errors import DriverError
from astrid_fs.durable import fsync_dir, write_atomic
from astrid_fs.errors import SessionError
from astrid_fs.fuse.control import held_upper_inodes
from astrid_fs.overlay.layers import lstat_or_none
from astrid_fs.overlay.whiteout import OverlayXattrs, get_redirect, is_opaque
from astrid_fs.review import basecontent
from astrid_fs.review.bases import Base, BaseIndex, open_index, walk_local
from astrid_fs.review.entrycopy import clone_or_copy, copy_entry, copy_meta
from astrid_fs.review.lowers import SessionLowers
from astrid_fs.review.remote_commit import RemoteOp, apply_op
from astrid_fs.session import Session

State = Literal["prepared", "vacating", "placing", "cleaning"]
CRASH_ENV = "ASTRID_FS_CRASH_AT"  # "N": os._exit(CRASH_EXIT) at the N-th step
FAIL_ENV = "ASTRID_FS_FAIL_AT"  # "N": raise ENOSPC at the N-th step (disk full)
CRASH_EXIT = 99


@dataclass(frozen=True)
class Vacate:
    """Move lower `path` (pre-commit lower path) to staging `slot`."""

    path: str
    slot: str


@dataclass(frozen=True)
class Place:
    """Make session path `to` in the lower: `move`/`put` the staging `slot`
    there, `mkdir` it, or `link` it to the already placed `source`."""

    op: Literal["move", "put", "mkdir", "link"]
    to: str
    slot: str = ""
    source: str = ""


@dataclass(frozen=True)
class Stage:
    """Copy upper entry `path` into staging `slot` (before the commit point);
    with `link`, hard-link it instead (only for an unmounted session whose
    upper shares the lower's filesystem: no data copied, none freed)."""

    path: str
    slot: str
    link: bool = False


@dataclass(frozen=True)
class DirMeta:
    """Metadata a committed lower dir gets, recorded from the upper at planning."""

    path: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: dict[str, str] = field(default_factory=dict)  # name -> hex value


@dataclass(frozen=True)
class Cleanup:
    """Remove upper entry `path` if it is still the one planned (same inode,
    mtime, size, mode: a write through the mount since then keeps it); a dir
    loses the xattrs in `strip`, then goes if empty and plain."""

    path: str
    is_dir: bool
    ino: int = 0
    mtime_ns: int = 0
    size: int = 0
    mode: int = 0
    strip: tuple[str, ...] = ()
    remote: bool = False  # under a mounted source: no local lower dir to compare


@dataclass(frozen=True)
class Record:
    txid: str
    state: State
    staging: str  # absolute path of the staging dir inside the lower fs
    stage: tuple[Stage, ...] = ()
    vacate: tuple[Vacate, ...] = ()
    place: tuple[Place, ...] = ()
    dirmeta: tuple[DirMeta, ...] = ()
    cleanup: tuple[Cleanup, ...] = ()
    paths: tuple[str, ...] = ()  # session paths touched (for mount invalidation)
    remote: tuple[RemoteOp, ...] = ()  # write-back calls to mounted sources (placing)

    def encode_ops(self) -> bytes:
        """Everything but the state: written once, before the first state."""
        return json.dumps({
            "stage": [[x.path, x.slot, x.link] for x in self.stage],
            "vacate": [[x.path, x.slot] for x in self.vacate],
            "place": [[x.op, x.to, x.slot, x.source] for x in self.place],
            "dirmeta": [[x.path, x.mode, x.uid, x.gid, x.mtime_ns, x.xattrs]
                        for x in self.dirmeta],
            "cleanup": [[x.path, x.is_dir, x.ino, x.mtime_ns, x.size, x.mode, list(x.strip),
                         x.remote] for x in self.cleanup],
            "paths": list(self.paths),
            "remote": [[x.op, x.path, x.mode, x.mtime_ns, x.target] for x in self.remote],
        }, separators=(",", ":")).encode()

    def encode_state(self) -> bytes:
        return json.dumps({"txid": self.txid, "state": self.state,
                           "staging": self.staging}).encode()

    @classmethod
    def decode(cls, state: bytes, ops: bytes) -> Record:
        head: dict[str, Any] = json.loads(state)
        d: dict[str, Any] = json.loads(ops)
        return cls(
            txid=head["txid"], state=head["state"], staging=head["staging"],
            stage=tuple(Stage(*x) for x in d["stage"]),
            vacate=tuple(Vacate(*x) for x in d["vacate"]),
            place=tuple(Place(*x) for x in d["place"]),
            dirmeta=tuple(DirMeta(*x) for x in d["dirmeta"]),
            cleanup=tuple(Cleanup(x[0], x[1], x[2], x[3], x[4], x[5], tuple(x[6]), x[7])
                          for x in d["cleanup"]),
            paths=tuple(d["paths"]),
            remote=tuple(RemoteOp(*x) for x in d["remote"]),
        )


class BusyError(SessionError):
    """Another commit, discard or rollback holds the session."""


class Steps:
    """Counts journal steps (for progress, and so that a test can make step N
    crash with os._exit or fail with ENOSPC through the environment, read
    once at construction). `on_step(count, total)` reports progress."""

    def __init__(self, crash_at: int | None = None, fail_at: int | None = None,
                 on_step: Callable[[int, int], None] | None = None) -> None:
        self.count = 0
        self.total = 0
        self.crash_at = crash_at
        self.fail_at = fail_at
        self.on_step = on_step

    @classmethod
    def from_env(cls, on_step: Callable[[int, int], None] | None = None) -> Steps:
        crash, fail = os.environ.get(CRASH_ENV), os.environ.get(FAIL_ENV)
        return cls(int(crash) if crash else None, int(fail) if fail else None, on_step)

    def expect(self, rec: Record) -> None:
        """Set the total number of steps `rec` will take (for progress)."""
        self.total = self.count + 10 + len(rec.stage) + len(rec.vacate) + len(rec.place) \
            + len(rec.dirmeta) + len(rec.cleanup)

    def step(self) -> None:
        self.count += 1
        if self.count == self.crash_at:
            os._exit(CRASH_EXIT)
        if self.count == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        if self.on_step is not None:
            self.on_step(self.count, max(self.total, self.count))


def record_path(session: Session, txid: str) -> Path:
    """The small state file of a commit; its ops live in `ops_path`."""
    return session.journal_dir / f"commit-{txid}.json"


def ops_path(session: Session, txid: str) -> Path:
    return session.journal_dir / f"ops-{txid}.json"


def save_ops(session: Session, rec: Record) -> None:
    write_atomic(ops_path(session, rec.txid), rec.encode_ops())


def save(session: Session, rec: Record) -> None:
    """Durably record `rec`'s state (its ops must be saved already)."""
    write_atomic(record_path(session, rec.txid), rec.encode_state())


def load(session: Session, txid: str) -> Record:
    state = record_path(session, txid)
    try:
        return Record.decode(state.read_bytes(), ops_path(session, txid).read_bytes())
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise SessionError(f"session {session.name}: unreadable journal {state}: {e}") from e


def forget(session: Session, txid: str) -> None:
    """Delete a finished (or never started) commit's journal files."""
    record_path(session, txid).unlink(missing_ok=True)
    ops_path(session, txid).unlink(missing_ok=True)
    fsync_dir(session.journal_dir)


def pending(session: Session) -> list[Record]:
    """Records left by commits that did not finish."""
    return [load(session, path.name[len("commit-"):-len(".json")])
            for path in sorted(session.journal_dir.glob("commit-*.json"))]
@contextlib.contextmanager
def locked(session: Session) -> Iterator[None]:
    """Hold the session's journal lock: one commit/discard/rollback at a time."""
    session.journal_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(session.journal_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(
                f"session {session.name} is busy: another commit, discard or rollback "
                "is running") from None
        yield
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def sync_fs(path: str | os.PathLike[str]) -> None:
    """syncfs(2) the filesystem holding `path`: every write so far is durable.
    One call replaces an fsync per staged file (same guarantee before rename)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fspath(path))
    finally:
        os.close(fd)


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _private_filter(names: OverlayXattrs) -> Any:
    return lambda k: not (names.is_private(k) or k.startswith("trusted.overlay."))


def advance(session: Session, rec: Record, state: State, steps: Steps) -> Record:
    rec = replace(rec, state=state)
    save(session, rec)
    steps.step()
    return rec


def run(session: Session, rec: Record, steps: Steps) -> None:
    """Carry `rec` from its state to the end. A record in `prepared` is staged
    here (only by the commit that wrote it; recovery rolls those back)."""
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
    _clean(session, rec, steps)


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


def _clean(session: Session, rec: Record, steps: Steps) -> None:
    upper = str(session.upper)
    names = session.xattrs
    # Files the mount's kernel writes through passthrough stay (equal to the
    # lower now): removing them would orphan those writes.
    held = held_upper_inodes(session)
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
            os.unlink(path)
        steps.step()
    shutil.rmtree(rec.staging, ignore_errors=True)
    _rebase(session, rec)
    basecontent.forget(session, rec.paths)  # landed: the project holds them now
    sync_fs(upper)
    steps.step()
    forget(session, rec.txid)


def _rebase(session: Session, rec: Record) -> None:
    """The landed entries are the session's new base (bases.py): without
    this, the session's next change to them would conflict with its own
    commit. Repeating it is harmless (it records what the lower holds now)."""
    index = open_index(session.root)
    if index is None:
        return
    try:
        moved = {p.to for p in rec.place if p.op == "move"}
        with index.batch():  # one database sync for the whole commit
            for v in rec.vacate:
                index.forget_tree(v.path)
            rows: list[tuple[str, Base | None]] = []
            for path in rec.paths:
                if path in moved:
                    index.forget_tree(path)
                    index.put(walk_local(session.lower, path))
                else:
                    st = lstat_or_none(os.path.join(session.lower, path))
                    rows.append((path, None if st is None else Base.of_stat(st)))
            index.put(rows)
            if rec.remote:
                _rebase_remote(session, rec, index)
    finally:
        index.close()


def _rebase_remote(session: Session, rec: Record, index: BaseIndex) -> None:
    lowers = SessionLowers.open(session.root, session.lower)
    try:
        for op in rec.remote:
            if op.op == "delete_tree":
                index.forget_tree(op.path)
                continue
            r = lowers.resolve(op.path)
            try:
                now = r.driver.stat(r.rel)
            except DriverError:
                continue  # a stale base can only add a conflict, never hide one
            index.put([(op.path, None if now is None else Base.of_entry(now))])
    finally:
        lowers.close()


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


def recover(session: Session, steps: Steps | None = None) -> list[tuple[str, Record]]:
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
            run(session, rec, steps or Steps())
        except OSError as e:
            raise SessionError(
                f"session {session.name}: cannot finish interrupted commit {rec.txid}: "
                f"{e.strerror or e}; its journal is kept, run astrid-fs again once "
                "that is fixed") from e
        done.append(("finished", rec))
    return done
