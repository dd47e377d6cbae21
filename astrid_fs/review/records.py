"""The commit journal's records: what one commit will do (stage, vacate,
place, set dir metadata, clean up) and the state it has reached, written
as two files in the session's `journal/` (ops once, then the small state
file rewritten atomically at each state). journal.py carries a record
through its states; docs/design/journal.md has the invariants.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from astrid_fs.durable import fsync_dir, write_atomic
from astrid_fs.errors import SessionError
from astrid_fs.review.remote_commit import RemoteOp
from astrid_fs.session import Session

State = Literal["prepared", "vacating", "placing", "cleaning"]


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
