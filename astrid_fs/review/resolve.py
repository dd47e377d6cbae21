"""Resolving conflicts, and bringing project changes into a session.

A conflict is a change whose base (origin fingerprint or base index row)
the project has moved on from. Three ways out, per path, as git offers:

- `ours`: keep the session's version; its base becomes the project as it is
  now (so the commit will overwrite the project there, knowingly);
- `theirs`: take the project's version: the session's change is discarded
  (with an automatic snapshot, like every discard);
- `merge`: for text files (in the project dir or objects of a mounted
  source, an S3 bucket), a three-way merge (merge3, git's conflict
  markers) of the session's version and the project's against the base
  content, where the base content was kept (the session's
  `base-content.pack`); without it the base is empty and every difference is a
  conflict region. A clean merge resolves the path; one with markers leaves
  it in conflict ("has merge conflict markers") until the markers are gone.

`update` does `merge` for every conflicting text file and makes the project
as it is now the base of every path the session did not change, so later
edits there are judged against what the session actually saw.

Knows: conflicts, the base index, the upper layer's files. Does not know
how conflicts are found (conflicts.py) or shown (diffview.py).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from typing import Literal

import merge3

from astrid_fs.durable import write_atomic
from astrid_fs.errors import UsageError
from astrid_fs.overlay.whiteout import Origin, get_origin, set_origin
from astrid_fs.review import basecontent, journal
from astrid_fs.review.bases import rebase_paths, rerecord
from astrid_fs.review.changes import Change
from astrid_fs.review.commit import finish_interrupted, open_lowers, resolve_paths, session_changes
from astrid_fs.review.conflicts import UNMERGED, unmerged_paths
from astrid_fs.review.discard import discard_locked
from astrid_fs.review.mountlink import MountLink, link_for
from astrid_fs.review.selection import is_under
from astrid_fs.review.snapshot import finish_rollback, take_snapshot
from astrid_fs.session import Session

Side = Literal["ours", "theirs", "merge"]
MERGE_LIMIT = basecontent.LIMIT  # larger files are not merged (nor are their bases kept)


@dataclass(frozen=True)
class Outcome:
    """What happened to one conflicting path."""

    path: str
    result: Literal["ours", "theirs", "merged", "markers", "kept"]
    why: str = ""


def unmerged(session: Session) -> set[str]:
    return unmerged_paths(session.root)


def _set_unmerged(session: Session, paths: set[str]) -> None:
    write_atomic(session.root / UNMERGED, json.dumps(sorted(paths)).encode())


def resolve(session: Session, paths: list[str], side: Side,
            mount: MountLink | None = None) -> list[Outcome]:
    """Resolve the conflicts at or under `paths` (all conflicts if empty)
    taking `side`; a path naming no conflict is a usage error (checked for
    every path before anything is done). `mount`: see mountlink.py."""
    link = link_for(session, mount)
    with journal.locked(session):
        finish_interrupted(session, mount=link)
        finish_rollback(session, link)
        conflicts = _conflicts(session, paths, link)
        if side == "theirs":
            take_snapshot(session, reason="before resolve --theirs " + " ".join(
                c.path for c in conflicts), mount=link)
            discard_locked(session, [c.path for c in conflicts], reason="-", mount=link)
            _forget_unmerged(session, {c.path for c in conflicts})
            return [Outcome(c.path, "theirs") for c in conflicts]
        take_snapshot(session, reason=f"before resolve --{side} " + " ".join(
            c.path for c in conflicts), mount=link)
        if side == "ours":
            _take_ours(session, conflicts)
            return [Outcome(c.path, "ours") for c in conflicts]
        outcomes = [_merge(session, c) for c in conflicts]
        link.changed([o.path for o in outcomes])
        return outcomes


def _conflicts(session: Session, paths: list[str], mount: MountLink) -> list[Change]:
    found = [c for c in session_changes(session, mount) if c.conflict]
    prefixes = resolve_paths(session, paths)
    if not prefixes:
        if not found:
            raise UsageError(f"session {session.name} has no conflict")
        return found
    missing = [p for p in prefixes if not any(is_under(c.path, p) for c in found)]
    if missing:
        raise UsageError("no conflict at " + ", ".join(map(repr, missing))
                         + " in this session; nothing was resolved")
    return [c for c in found if any(is_under(c.path, p) for p in prefixes)]


def _take_ours(session: Session, conflicts: list[Change]) -> None:
    """The session's version stands: the project as it is now becomes the
    base (index rows, and the origin of a copied-up entry)."""
    lowers = open_lowers(session)
    try:
        for c in conflicts:
            up = str(session.upper / c.path)
            origin = get_origin(up, session.xattrs)
            if origin is None:
                continue
            if lowers is not None and lowers.is_remote(origin.path):
                fresh = lowers.fingerprint(origin.path)
                set_origin(up, session.xattrs, Origin(
                    origin.path, origin.kind, origin.ino, origin.dev, origin.size,
                    origin.mtime_ns, origin.mode, fresh))
                continue
            low = session.lower / (c.lower_path or origin.path)
            try:
                st = os.lstat(low)
            except FileNotFoundError:
                continue  # gone: the index row (now "absent") carries the base
            set_origin(up, session.xattrs, Origin.of_stat(c.lower_path or origin.path, st))
    finally:
        if lowers is not None:
            lowers.close()
    rebase_paths(session.root, session.lower,
                 {p for c in conflicts for p in (c.path, c.lower_path) if p})
    for c in conflicts:
        _keep_base_content(session, c)
    _forget_unmerged(session, {c.path for c in conflicts})


def _forget_unmerged(session: Session, paths: set[str]) -> None:
    left = unmerged(session)
    if left & paths:
        _set_unmerged(session, left - paths)


def _keep_base_content(session: Session, change: Change) -> None:
    """Keep the project's version of a text file the session changes as the
    base content of later merges (it is the base from now on)."""
    path = change.lower_path or change.path
    body = _project_file(session, path) if change.kind == "file" else None
    basecontent.replace(session, path, body)


def _project_file(session: Session, path: str) -> bytes | None:
    """The bytes of the project's regular file at `path` (in the lower dir,
    or an object of a mounted source), or None: absent, not a regular file,
    or over MERGE_LIMIT."""
    lowers = open_lowers(session)
    try:
        if lowers is not None and lowers.is_remote(path):
            entry = lowers.stat(path)
            if entry is None or entry.kind != "file" or entry.size > MERGE_LIMIT:
                return None
            return lowers.read(path, MERGE_LIMIT)[0]
    finally:
        if lowers is not None:
            lowers.close()
    low = session.lower / path
    try:
        st = os.lstat(low)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MERGE_LIMIT:
        return None
    return low.read_bytes()


def _is_text(body: bytes) -> bool:
    return b"\0" not in body[:8192]


def _merge(session: Session, c: Change) -> Outcome:
    if c.path in unmerged(session):  # merged before: what is left is the markers
        return Outcome(c.path, "markers", "conflict markers written; edit them out")
    up = session.upper / c.path
    theirs = _project_file(session, c.lower_path or c.path) \
        if c.kind == "file" and c.status in ("M", "R", "U") else None
    if theirs is None:
        return Outcome(c.path, "kept", "only files both sides changed are merged (not a "
                       "deletion, a dir, a symlink, or over 8 MiB); use --ours or --theirs")
    ours = up.read_bytes()
    base = basecontent.read(session, c.lower_path or c.path) or b""
    if max(len(ours), len(theirs), len(base)) > MERGE_LIMIT or not all(
            map(_is_text, (ours, theirs, base))):
        return Outcome(c.path, "kept", "binary or too large to merge; use --ours or --theirs")
    m = merge3.Merge3(base.splitlines(True), ours.splitlines(True), theirs.splitlines(True))
    clean = not any(region[0] == "conflict" for region in m.merge_regions())
    merged = b"".join(m.merge_lines(name_a=b"session", name_b=b"project", name_base=b"base",
                                    base_marker=b"|||||||"))
    _write_upper(session, c.path, merged)
    _take_ours(session, [c])
    if clean:
        return Outcome(c.path, "merged")
    _set_unmerged(session, unmerged(session) | {c.path})
    return Outcome(c.path, "markers", "conflict markers written; edit them out")


def _write_upper(session: Session, path: str, body: bytes) -> None:
    """Replace upper file `path` by one holding `body`, keeping its mode,
    owner, times and xattrs (origin included): written aside, then renamed."""
    up = session.upper / path
    session.tmp.mkdir(parents=True, exist_ok=True)
    tmp = session.tmp / f"merge-{os.getpid()}"
    shutil.copy2(up, tmp)  # metadata and xattrs; the data is replaced below
    st = os.lstat(up)
    with open(tmp, "r+b") as f:
        f.truncate(0)
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.chown(tmp, st.st_uid, st.st_gid)
    os.rename(tmp, up)


def update(session: Session, paths: list[str],
           mount: MountLink | None = None) -> list[Outcome]:
    """Bring the project's changes into the session: merge every conflicting
    text file (under `paths`), and make the project as it is now the base of
    every path the session has not changed. Returns what became of each
    conflict (those that cannot be merged stay, for --ours/--theirs)."""
    link = link_for(session, mount)
    with journal.locked(session):
        finish_interrupted(session, mount=link)
        finish_rollback(session, link)
        changes = session_changes(session, link)
        prefixes = resolve_paths(session, paths)
        chosen = [c for c in changes if c.conflict and (
            not prefixes or any(is_under(c.path, p) for p in prefixes))]
        if chosen:
            take_snapshot(session, reason="before update", mount=link)
        outcomes = [_merge(session, c) for c in chosen]
        # The paths the session changed keep their base (merged ones were
        # rebased above); everything else takes the project as it is now.
        _rebase_untouched(session, changes)
        link.changed(None)
        return outcomes


def _rebase_untouched(session: Session, changes: list[Change]) -> None:
    keep: dict[str, bool] = {}
    for c in changes:
        tree = c.status in ("D", "T") and (c.kind == "dir" or c.old_kind == "dir")
        for p in (c.path, c.lower_path):
            if p:
                keep[p] = keep.get(p, False) or tree
    rerecord(session.root, session.lower, keep)
