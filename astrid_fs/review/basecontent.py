"""The review's side of base content (overlay/basecontent.py keeps it):
reading the project's version a session started from, replacing it when
the base moves (resolve --ours, a merge, update), and forgetting it when a
path leaves the session (commit, discard, rollback).

Keys are lower (project) paths, as the overlay writes them; the content
lives in the session's pack (overlay/basepack.py), whose records the review
appends with an fsync each, and which it compacts when what it dropped
makes up most of the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from astrid_fs.overlay.basecontent import LIMIT, open_pack
from astrid_fs.overlay.basepack import Pack
from astrid_fs.session import Session

__all__ = ["LIMIT", "forget", "forget_all", "open_kept", "prune", "read", "replace"]


def open_kept(session: Session, create: bool = False) -> Pack | None:
    """The session's pack of kept content (None: nothing was ever kept);
    the caller closes it."""
    return open_pack(os.fsencode(session.root), sync=True, create=create)


def read(session: Session, lower_path: str) -> bytes | None:
    """The kept base content of `lower_path`, or None if none was kept."""
    pack = open_kept(session)
    if pack is None:
        return None
    with pack:
        found = pack.read(os.fsencode(lower_path))
    return None if found is None else found[1]


def replace(session: Session, lower_path: str, body: bytes | None) -> None:
    """Make `body` the base content of `lower_path` (None: keep none)."""
    if body is None or len(body) > LIMIT:
        forget(session, [lower_path])
        return
    pack = open_kept(session, create=True)
    assert pack is not None
    with pack:
        pack.put(os.fsencode(lower_path), body)


def forget(session: Session, paths: Iterable[str]) -> None:
    """Drop the kept content at and below each of `paths` (they left the
    session: landed, or discarded; "": everything). Repeating it is harmless."""
    pack = open_kept(session)
    if pack is None:
        return
    with pack:
        pack.drop(os.fsencode(p) for p in paths)
        pack.compact()


def forget_all(session: Session) -> None:
    forget(session, [""])


def prune(session: Session, keep: Iterable[str]) -> None:
    """Drop the content kept for every path not in `keep` (the lower paths
    the session still changes), e.g. after a rollback dropped changes."""
    pack = open_kept(session)
    if pack is None:
        return
    wanted = {os.fsencode(p) for p in keep}
    with pack:
        pack.drop(p for p in pack.paths() if p not in wanted)
        pack.compact()
