"""Changes under a source mounted from the session's mount table (an S3
bucket at /mnt/s3, a second directory at /mnt/data), and how commit writes
them back through that source's driver.

Knows: the mount table (`SessionLowers`), the driver write-back calls
(`put_file`, `make_dir`, `make_symlink`, `set_attrs`, `delete`,
`delete_tree`), and the origin a remote copy-up records (`blake3` holds the
source's fingerprint, S3: the ETag). Does not know: the local lower (see
changes.py) or the journal's states (journal.py runs the ops this module
plans, after the local placements, each one idempotent). Renamed dirs
under a mounted source are refused: sources have no atomic dir rename.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from astrid_fs.drivers.base import EntryStat
from astrid_fs.errors import UsageError
from astrid_fs.overlay.whiteout import (
    get_origin,
    get_redirect,
    is_opaque,
    is_whiteout,
    kind_of_mode,
)
from astrid_fs.review.bases import Base, BaseIndex, Unknown, same_remote, walk_remote
from astrid_fs.review.changes import Change, Flag, Status
from astrid_fs.review.lowers import SessionLowers
from astrid_fs.session import Session


@dataclass(frozen=True)
class RemoteOp:
    """One write-back call: `op` on session path `path` (see module doc)."""

    op: str  # "put" | "mkdir" | "symlink" | "delete" | "delete_tree" | "attrs"
    path: str
    mode: int = 0
    mtime_ns: int = 0
    target: str = ""


def mount_points(lowers: SessionLowers) -> list[str]:
    """Session paths of the non-root table entries ("mnt/s3")."""
    return [e.path.strip("/") for e in lowers.table.entries if e.path != "/"]


def scan_remote(session: Session, lowers: SessionLowers,
                index: BaseIndex | None = None) -> list[Change]:
    """Every change under a mounted source, conflicts marked: by the copy-up's
    origin (its ETag), else by the session's base `index` for what the session
    replaced, deleted or added without copying it."""
    found: list[Change] = []
    for point in mount_points(lowers):
        up = os.path.join(session.upper, point)
        if os.path.isdir(up) and not os.path.islink(up):
            _walk(session, lowers, point, exists=True, found=found)
    found = _pair_renames([replace(c, remote=True) for c in found])
    if index is not None:
        found = [c if c.conflict else replace(c, conflict=_base_conflict(c, lowers, index))
                 for c in found]
    return sorted(found, key=lambda c: c.path)


def _pair_renames(found: list[Change]) -> list[Change]:
    """A file the mount renamed under a source: an added file whose copy-up
    origin names a path whose object the session deleted (a whiteout) is
    that object renamed; the deletion is then part of the rename."""
    deleted = {c.path: c for c in found if c.status == "D" and c.whiteout}
    paired: list[Change] = []
    sources: set[str] = set()
    for c in found:
        o = c.origin
        if (c.status == "A" and c.kind == "file" and o is not None and o.path != c.path
                and o.path in deleted and o.path not in sources
                and deleted[o.path].kind == "file"):
            sources.add(o.path)
            c = replace(c, status="R", lower_path=o.path, source_whiteout=o.path)
        paired.append(c)
    return [c for c in paired if not (c.status == "D" and c.path in sources)]


def _base_conflict(change: Change, lowers: SessionLowers, index: BaseIndex) -> str | None:
    """Why the source's entry at `change.path` (and, for a deleted or
    replaced dir, below it) is not what the session's base recorded."""
    if change.origin is not None and change.origin.blake3 is not None:
        return None  # judged by the origin's fingerprint already
    r = lowers.resolve(change.path)
    now = r.driver.stat(r.rel)
    why = _remote_differs(change.path, index.lookup(change.path),
                          None if now is None else Base.of_entry(now), r.remote_path)
    if why is not None or now is None or not now.is_dir or change.status not in ("D", "T"):
        return why
    point = change.path[:len(change.path) - len(r.rel)].rstrip("/")
    for sub, entry in walk_remote(r.driver, point, r.rel):
        why = _remote_differs(sub, index.lookup(sub), entry, lowers.resolve(sub).remote_path)
        if why is not None:
            return why
    return None


def _remote_differs(path: str, base: Base | Unknown | None, now: Base | None,
                    shown: str) -> str | None:
    if isinstance(base, Unknown) or same_remote(base, now):
        return None
    if base is None:
        return f"{shown} was added since the session began"
    if now is None:
        return f"{shown} was deleted since the session began"
    return f"{shown} changed since the session began"


def _kind(entry: EntryStat) -> str:
    return "file" if entry.kind == "file" else entry.kind


def _walk(session: Session, lowers: SessionLowers, path: str, exists: bool,
          found: list[Change]) -> None:
    updir = os.path.join(session.upper, path)
    names = session.xattrs
    if get_redirect(updir, names) is not None:
        raise UsageError(f"{path}: a renamed directory under a mounted source cannot be "
                         "committed; discard it or move its files one by one")
    present = sorted(os.listdir(updir))
    if exists and is_opaque(updir, names):
        r = lowers.resolve(path)
        for name, entry in r.driver.list_dir(r.rel):
            if name not in present:
                found.append(Change(f"{path}/{name}", "D", _kind(entry),
                                    lower_path=f"{path}/{name}"))
    for name in present:
        child = f"{path}/{name}"
        full = os.path.join(session.upper, child)
        ust = os.lstat(full)
        r = lowers.resolve(child)
        here = r.driver.stat(r.rel) if exists else None
        if is_whiteout(full, ust):
            if here is not None:
                found.append(Change(child, "D", _kind(here), lower_path=child, whiteout=True,
                                    upper_ino=ust.st_ino))
            continue
        kind = kind_of_mode(ust.st_mode)
        if kind == "dir":
            if here is None or not here.is_dir:
                found.append(Change(child, "A" if here is None else "T", "dir",
                                    lower_path=None if here is None else child,
                                    upper_ino=ust.st_ino))
                _walk(session, lowers, child, exists=False, found=found)
            else:
                _walk(session, lowers, child, exists=True, found=found)
            continue
        found += _file_change(session, lowers, child, ust, here)


def _file_change(session: Session, lowers: SessionLowers, path: str, ust: os.stat_result,
                 entry: EntryStat | None) -> list[Change]:
    origin = get_origin(os.path.join(session.upper, path), session.xattrs)
    kind = kind_of_mode(ust.st_mode)
    if entry is None:
        return [Change(path, "A", kind, origin=origin, upper_ino=ust.st_ino)]
    if _kind(entry) != kind:
        return [Change(path, "T", kind, lower_path=path, old_kind=_kind(entry),
                       origin=origin, upper_ino=ust.st_ino)]
    flags: list[Flag] = []
    if kind != "file" or ust.st_size != entry.size or ust.st_mtime_ns != entry.mtime_ns:
        flags.append("content" if kind == "file" else "target")
    if stat.S_IMODE(ust.st_mode) != stat.S_IMODE(entry.mode) and kind == "file":
        flags.append("mode")
    if not flags:
        return []
    conflict = None
    if origin is not None and origin.blake3 is not None:
        r = lowers.resolve(path)
        fresh = r.driver.fingerprint(r.rel)
        if fresh != origin.blake3:
            conflict = f"{r.remote_path} changed since the session copied it"
    status: Status = "M" if flags[0] == "content" else ("L" if flags[0] == "target" else "P")
    return [Change(path, status, kind, lower_path=path, flags=tuple(flags), origin=origin,
                   upper_ino=ust.st_ino, conflict=conflict)]


def plan_ops(session: Session, lowers: SessionLowers, chosen: list[Change]) -> list[RemoteOp]:
    """The write-back calls that land `chosen` (all under mounted sources):
    deletions deepest first, then dirs and files shallowest first."""
    removals: list[RemoteOp] = []
    puts: list[RemoteOp] = []
    for c in chosen:
        r = lowers.resolve(c.path)
        if r.entry.read_only:
            raise UsageError(f"{c.path}: {r.entry.source} is mounted read-only; "
                             "commit cannot write it back")
        if c.status in ("D", "T"):
            there = c.kind if c.status == "D" else c.old_kind
            removals.append(RemoteOp("delete_tree" if there == "dir" else "delete", c.path))
        if c.status == "R" and c.lower_path is not None:
            # Sources have no atomic rename: the new object is written whole
            # from the upper, the old one deleted (each step repeatable).
            removals.append(RemoteOp("delete", c.lower_path))
        if c.status == "D":
            continue
        ust = os.lstat(os.path.join(session.upper, c.path))
        if c.kind == "dir":
            puts.append(RemoteOp("mkdir", c.path, ust.st_mode))
        elif c.kind == "symlink":
            if not r.driver.capabilities.symlinks:
                raise UsageError(
                    f"{c.path} is a symlink and {r.entry.source} cannot hold symlinks: "
                    f"discard it (`astrid-fs discard SESSION {c.path}`) or commit the other "
                    "paths by name; nothing was changed")
            if c.status != "A":
                removals.append(RemoteOp("delete", c.path))
            puts.append(RemoteOp("symlink", c.path,
                                 target=os.readlink(os.path.join(session.upper, c.path))))
        elif c.kind == "file":
            puts.append(RemoteOp("put", c.path, ust.st_mode, ust.st_mtime_ns))
        else:
            raise UsageError(f"{c.path}: {r.entry.source} cannot hold a {c.kind}")
    return (sorted(removals, key=lambda o: -o.path.count("/"))
            + sorted(puts, key=lambda o: o.path.count("/")))


def apply_op(session: Session, lowers: SessionLowers, op: RemoteOp) -> None:
    """Carry out one write-back call; repeating it is harmless."""
    r = lowers.resolve(op.path)
    driver = r.driver
    if op.op == "delete":
        driver.delete(r.rel)
    elif op.op == "delete_tree":
        driver.delete_tree(r.rel)
    elif op.op == "mkdir":
        driver.make_dir(r.rel, op.mode)
    elif op.op == "symlink":
        if driver.stat(r.rel) is None:
            driver.make_symlink(r.rel, op.target)
    elif op.op == "put":
        src = Path(session.upper) / op.path
        if src.exists():  # gone: an earlier run put it and cleaned the upper
            driver.put_file(r.rel, src, op.mode, op.mtime_ns)
    elif op.op == "attrs":
        driver.set_attrs(r.rel, op.mode, op.mtime_ns)
