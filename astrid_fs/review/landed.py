"""After a commit lands: the landed entries are the session's new base.

Without this, the session's next change to them would conflict with its
own commit. The base index (bases.py) takes the lower's entries as they are
now, and the base content kept for them (basecontent.py) is dropped: the
next time the session hides them, the overlay keeps the new version.
Repeating it is harmless (it records what the lower holds now), so the
journal runs it in its `cleaning` state, which recovery replays.
"""

from __future__ import annotations

import os

from astrid_fs.drivers.errors import DriverError
from astrid_fs.overlay.layers import lstat_or_none
from astrid_fs.review import basecontent
from astrid_fs.review.bases import Base, BaseIndex, open_index, walk_local
from astrid_fs.review.lowers import SessionLowers
from astrid_fs.review.records import Record
from astrid_fs.session import Session


def rebase_landed(session: Session, rec: Record) -> None:
    """Make what `rec` landed the session's base (index rows, base content)."""
    _rebase(session, rec)
    basecontent.forget(session, rec.paths)


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
