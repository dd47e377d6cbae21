"""What a session changed: walk the upper layer and list `Change` values.

Knows: the overlay rules that decide which lower entry an upper entry stands
for (natural path, `redirect` of a renamed dir, `opaque` hiding a lower dir),
and how to compare one upper entry with that lower entry (kind, content,
symlink target, mode, owner, user xattrs, mtime). Only the upper layer is
walked; the lower is looked up entry by entry, so the cost follows the size
of the session, not of the project. Does not know: how changes are shown
(diffview), selected (selection), judged for conflicts (conflicts), landed
(commit) or dropped (discard).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Literal

import blake3

from astrid_fs.overlay.layers import lstat_or_none, same_content
from astrid_fs.overlay.whiteout import (
    Origin,
    OverlayXattrs,
    get_origin,
    get_redirect,
    is_opaque,
    is_whiteout,
    kind_of_mode,
)
from astrid_fs.review.bases import Base

Status = Literal["A", "M", "D", "R", "T", "L", "P", "X", "O", "U"]
# Flags a change can carry; the status letter is the most telling of them.
Flag = Literal["content", "target", "mode", "xattrs", "owner", "mtime"]
_FLAG_STATUS: tuple[tuple[Flag, Status], ...] = (
    ("content", "M"),
    ("target", "L"),
    ("mode", "P"),
    ("xattrs", "X"),
    ("owner", "O"),
    ("mtime", "U"),
)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Change:
    """One changed entry of the merged view, relative to the lower layer.

    `path` is the session path (posix, relative); `lower_path` the lower entry
    it replaces or deletes (for R: the rename source), None for additions.
    """

    path: str
    status: Status
    kind: str  # upper kind; for D the deleted lower kind
    lower_path: str | None = None
    old_kind: str | None = None
    flags: tuple[Flag, ...] = ()
    origin: Origin | None = None
    whiteout: bool = False  # D backed by a whiteout entry at `path` in the upper
    opaque: bool = False  # an upper dir that hides its lower dir's other children
    redirect: bool = False  # an upper dir carrying a redirect xattr
    upper_ino: int = 0
    conflict: str | None = None
    link_to: str | None = None  # an earlier change path sharing this upper inode
    source_whiteout: str | None = None  # R: the upper whiteout at the rename source
    remote: bool = False  # under a source mounted from the mount table (S3, ...)
    index_base: Base | None = None  # the base index's row for the entry it replaces

    @property
    def structural(self) -> bool:
        """Descendants cannot land without this entry landing first."""
        return self.kind == "dir" and self.status in ("A", "R", "T")


@dataclass
class _Walk:
    upper: str
    lower: str
    names: OverlayXattrs
    changes: list[Change] = field(default_factory=list)
    inodes: dict[int, str] = field(default_factory=dict)
    moved: frozenset[str] = frozenset()  # lower dirs some redirect takes elsewhere


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name




def user_xattrs(path: str, names: OverlayXattrs) -> dict[str, bytes]:
    """The xattrs of `path` that show through the mount (not the overlay's own)."""
    try:
        keys = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found: dict[str, bytes] = {}
    for key in keys:
        if names.is_private(key) or key.startswith("trusted.overlay."):
            continue
        try:
            found[key] = os.getxattr(path, key, follow_symlinks=False)
        except OSError:
            continue
    return found


def file_blake3(path: str) -> str:
    hasher = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def compare_entries(
    up: str, ust: os.stat_result, low: str, lst: os.stat_result, names: OverlayXattrs
) -> tuple[Flag, ...]:
    """What differs between an upper entry and the lower entry it stands for
    (same kind assumed). Directory mtimes are ignored: they move with children."""
    flags: list[Flag] = []
    kind = kind_of_mode(ust.st_mode)
    if kind == "file" and (ust.st_size != lst.st_size or not same_content(up, low)):
        flags.append("content")
    if kind == "symlink" and os.readlink(up) != os.readlink(low):
        flags.append("target")
    if kind == "other" and (stat.S_IFMT(ust.st_mode) != stat.S_IFMT(lst.st_mode)
                            or ust.st_rdev != lst.st_rdev):
        flags.append("content")
    if kind != "symlink" and stat.S_IMODE(ust.st_mode) != stat.S_IMODE(lst.st_mode):
        flags.append("mode")
    if user_xattrs(up, names) != user_xattrs(low, names):
        flags.append("xattrs")
    if (ust.st_uid, ust.st_gid) != (lst.st_uid, lst.st_gid):
        flags.append("owner")
    if kind in ("file", "symlink") and ust.st_mtime_ns != lst.st_mtime_ns:
        flags.append("mtime")
    return tuple(flags)


def status_of(flags: Iterable[Flag]) -> Status | None:
    present = set(flags)
    for flag, status in _FLAG_STATUS:
        if flag in present:
            return status
    return None


def scan(upper: str | os.PathLike[str], lower: str | os.PathLike[str],
         names: OverlayXattrs) -> list[Change]:
    """Every change of the session whose upper layer is `upper`, sorted by path.

    Renames pair a redirected dir (or a file whose origin names another path)
    with the deletion of its source, which then is not listed on its own.
    Hard links inside the upper are marked with `link_to`.
    """
    walk = _Walk(os.fspath(upper), os.fspath(lower), names)
    walk.moved = frozenset(_redirect_sources(walk.upper, "", "", names))
    _walk_dir(walk, "", "", hide=False)
    return _pair_renames(walk, walk.changes)


def _redirect_sources(upper: str, rel: str, base: str | None,
                      names: OverlayXattrs) -> set[str]:
    """The lower dirs that redirected upper dirs stand for (rename sources):
    their natural paths no longer hold them once the renames land."""
    found: set[str] = set()
    with os.scandir(os.path.join(upper, rel) if rel else upper) as it:
        dirs = [e.name for e in it if e.is_dir(follow_symlinks=False)]
    for name in dirs:
        path = _join(rel, name)
        natural = None if base is None else _join(base, name)
        raw = get_redirect(os.path.join(upper, path), names)
        child = natural if raw is None else _redirect_target(raw, natural)
        if raw is not None:
            found.add(child or "")
        found |= _redirect_sources(upper, path, child, names)
    return found


def _walk_dir(walk: _Walk, rel: str, base: str | None, hide: bool) -> None:
    """Compare upper dir `rel` (standing for lower dir `base`) entry by entry;
    `hide`: the lower children not in the upper are hidden (opaque)."""
    updir = os.path.join(walk.upper, rel) if rel else walk.upper
    with os.scandir(updir) as it:
        entries = sorted(it, key=lambda e: e.name)
    present = {e.name for e in entries}
    if hide and base is not None:
        lowdir = os.path.join(walk.lower, base) if base else walk.lower
        try:
            hidden = sorted(set(os.listdir(lowdir)) - present)
        except (FileNotFoundError, NotADirectoryError):
            hidden = []
        for name in hidden:
            lst = lstat_or_none(os.path.join(lowdir, name))
            if lst is not None:
                walk.changes.append(Change(
                    _join(rel, name), "D", kind_of_mode(lst.st_mode),
                    lower_path=_join(base, name)))
    for entry in entries:
        path = _join(rel, entry.name)
        natural = None if base is None else _join(base, entry.name)
        _visit(walk, path, natural, entry.stat(follow_symlinks=False),
               hidden_below=hide and base is not None)


def _visit(walk: _Walk, path: str, natural: str | None, ust: os.stat_result,
           hidden_below: bool = False) -> None:
    """`hidden_below`: the parent is opaque, so nothing of the lower shows below
    `path` either: a dir here hides its lower namesake's children as an opaque one
    does (`rm -r d; mkdir d; mkdir d/sub` leaves `d/sub` without the xattr)."""
    up = os.path.join(walk.upper, path)
    names = walk.names
    nat_st = None if natural is None else lstat_or_none(os.path.join(walk.lower, natural))
    if is_whiteout(up, ust):
        if nat_st is not None:  # (a rename's source: paired with the rename below)
            walk.changes.append(Change(
                path, "D", kind_of_mode(nat_st.st_mode), lower_path=natural,
                whiteout=True, origin=get_origin(up, names), upper_ino=ust.st_ino))
        return
    if natural in walk.moved:
        nat_st = None  # a new entry where a renamed lower dir was: nothing under it
    kind = kind_of_mode(ust.st_mode)
    origin = get_origin(up, names)
    if kind == "dir":
        _visit_dir(walk, path, natural, nat_st, ust, origin, hidden_below)
        return
    link_to = None
    if kind == "file" and ust.st_nlink > 1:
        link_to = walk.inodes.setdefault(ust.st_ino, path)
        link_to = None if link_to == path else link_to
    found = Change(path, "A", kind, origin=origin, upper_ino=ust.st_ino, link_to=link_to)
    if nat_st is None:
        walk.changes.append(found)
        return
    lkind = kind_of_mode(nat_st.st_mode)
    if lkind != kind:
        walk.changes.append(replace(found, status="T", lower_path=natural, old_kind=lkind))
        return
    flags = compare_entries(up, ust, os.path.join(walk.lower, natural or ""), nat_st, names)
    status = status_of(flags)
    if status is not None or link_to is not None:
        walk.changes.append(replace(found, status=status or "M", lower_path=natural,
                                    flags=flags))


def _redirect_target(raw: str, natural: str | None) -> str:
    if raw.startswith("/"):
        return raw.strip("/")
    parent = "" if natural is None else str(PurePosixPath(natural).parent)
    return _join("" if parent == "." else parent, raw)


def _visit_dir(walk: _Walk, path: str, natural: str | None, nat_st: os.stat_result | None,
               ust: os.stat_result, origin: Origin | None, hidden_below: bool = False) -> None:
    up = os.path.join(walk.upper, path)
    names = walk.names
    opaque = hidden_below or is_opaque(up, names)
    raw_redirect = get_redirect(up, names)
    base: str | None = natural
    if raw_redirect is not None and _rename_landed(walk, natural, nat_st, raw_redirect,
                                                   origin):
        raw_redirect = None  # committed before (then rolled back to): a plain dir now
    if raw_redirect is not None:
        base = _redirect_target(raw_redirect, natural)
        src_st = lstat_or_none(os.path.join(walk.lower, base))
        if nat_st is not None and natural != base:
            walk.changes.append(Change(path, "D", kind_of_mode(nat_st.st_mode),
                                       lower_path=natural))
        flags: tuple[Flag, ...] = ()
        if src_st is not None and stat.S_ISDIR(src_st.st_mode):
            flags = compare_entries(up, ust, os.path.join(walk.lower, base), src_st, names)
        walk.changes.append(Change(path, "R", "dir", lower_path=base, flags=flags,
                                   origin=origin, redirect=True, opaque=opaque,
                                   upper_ino=ust.st_ino))
        _walk_dir(walk, path, base, hide=opaque)
        return
    if nat_st is None:
        walk.changes.append(Change(path, "A", "dir", origin=origin, opaque=opaque,
                                   upper_ino=ust.st_ino))
        _walk_dir(walk, path, None, hide=False)
        return
    if not stat.S_ISDIR(nat_st.st_mode):
        walk.changes.append(Change(path, "T", "dir", lower_path=natural,
                                   old_kind=kind_of_mode(nat_st.st_mode), origin=origin,
                                   opaque=opaque, upper_ino=ust.st_ino))
        _walk_dir(walk, path, None, hide=False)
        return
    flags = compare_entries(up, ust, os.path.join(walk.lower, natural or ""), nat_st, names)
    status = status_of(flags)
    if status is not None:
        walk.changes.append(Change(path, status, "dir", lower_path=natural, flags=flags,
                                   origin=origin, opaque=opaque, upper_ino=ust.st_ino))
    _walk_dir(walk, path, natural, hide=opaque)


def _rename_landed(walk: _Walk, natural: str | None, nat_st: os.stat_result | None,
                   raw_redirect: str, origin: Origin | None) -> bool:
    if natural is None:
        return False
    return rename_landed(walk.lower, natural, nat_st, raw_redirect, origin)


def rename_landed(lower: str, natural: str, nat_st: os.stat_result | None,
                  raw_redirect: str, origin: Origin | None) -> bool:
    """Has the lower already made the rename a redirected upper dir at
    `natural` stands for (a commit landed it, and a rollback brought the
    redirect back)? Its source is gone and the very dir the session copied
    (the origin's inode) now sits at `natural`."""
    if nat_st is None or origin is None or not stat.S_ISDIR(nat_st.st_mode):
        return False
    src = lstat_or_none(os.path.join(lower, _redirect_target(raw_redirect, natural)))
    return (src is None or not stat.S_ISDIR(src.st_mode)) and (
        nat_st.st_ino, nat_st.st_dev) == (origin.ino, origin.dev)


def drop_landed_redirects(upper: str, lower: str, names: OverlayXattrs, rel: str = "") -> int:
    """Strip the redirect of every upper dir whose rename the lower already
    made (see `rename_landed`), so the mount and diff both see a plain dir
    over the renamed lower dir; returns how many. Repeating it is harmless.
    (Only dirs whose path is their lower path are checked: a landed rename
    leaves the dir at its natural place.)"""
    dropped = 0
    here = os.path.join(upper, rel) if rel else upper
    with os.scandir(here) as it:
        dirs = [e.name for e in it if e.is_dir(follow_symlinks=False)]
    for name in dirs:
        path = _join(rel, name)
        full = os.path.join(upper, path)
        raw = get_redirect(full, names)
        if raw is not None and rename_landed(
                lower, path, lstat_or_none(os.path.join(lower, path)), raw,
                get_origin(full, names)):
            os.removexattr(full, names.redirect, follow_symlinks=False)
            dropped += 1
        if get_redirect(full, names) is None:
            dropped += drop_landed_redirects(upper, lower, names, path)
    return dropped


def _pair_renames(walk: _Walk, changes: list[Change]) -> list[Change]:
    """Drop the deletion that is the source of a rename; turn an addition whose
    origin names a deleted path into a rename of that path."""
    deleted = {c.lower_path: c for c in changes if c.status == "D"}
    sources: set[str] = set()
    paired: list[Change] = []
    for c in changes:
        if c.status == "R" and c.lower_path is not None:
            sources.add(c.lower_path)
        elif (c.status == "A" and c.kind != "dir" and c.origin is not None
              and c.origin.path != c.path and c.origin.path in deleted
              and c.origin.path not in sources
              and deleted[c.origin.path].kind == c.origin.kind):
            sources.add(c.origin.path)
            src = os.path.join(walk.lower, c.origin.path)
            flags = compare_entries(os.path.join(walk.upper, c.path),
                                    os.lstat(os.path.join(walk.upper, c.path)),
                                    src, os.lstat(src), walk.names)
            c = replace(c, status="R", lower_path=c.origin.path, flags=flags)
        paired.append(c)
    kept = []
    for c in paired:
        if c.status == "D" and c.lower_path in sources:
            continue
        if c.status == "R" and c.lower_path in deleted and deleted[c.lower_path].whiteout:
            c = replace(c, source_whiteout=deleted[c.lower_path].path)
        kept.append(c)
    return sorted(kept, key=lambda c: c.path)
