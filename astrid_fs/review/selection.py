"""Which changes a command acts on: user paths to session paths, and the
changes under them plus what they cannot land without (structural
ancestors, the rename that frees a path, the deletion at a rename target,
the changes whose copied-up base a deletion or replacement changes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from astrid_fs.errors import UsageError
from astrid_fs.review.changes import Change


def normalize_path(raw: str, lower: str | os.PathLike[str],
                   mountpoint: str | None = None, cwd: str | None = None) -> str:
    """A user-given path as a session path; absolute paths must lie inside the
    lower dir or the mount point. A relative path is taken from `cwd` when
    that is inside the mount point or the lower dir (as git takes paths from
    where you stand in the work tree), else from the session root. Raises
    UsageError for paths outside."""
    roots = [os.fspath(lower)] + ([mountpoint] if mountpoint else [])
    if not os.path.isabs(raw) and cwd is not None and any(
            _inside(cwd, root) for root in roots):
        raw = os.path.join(cwd, raw)
    if os.path.isabs(raw):
        norm = os.path.normpath(raw)
        for root in roots:
            rel = os.path.relpath(norm, os.path.normpath(root))
            if rel == "." or not rel.startswith(".."):
                return "" if rel == "." else rel
        raise UsageError(f"path {raw!r} is outside the session (lower {roots[0]})")
    rel = os.path.normpath(raw)
    if rel.startswith("..") or rel.startswith("/"):
        raise UsageError(f"path {raw!r} is outside the session")
    return "" if rel == "." else rel


def _inside(path: str, root: str) -> bool:
    rel = os.path.relpath(os.path.normpath(path), os.path.normpath(root))
    return rel == "." or not rel.startswith("..")


def is_under(path: str, prefix: str) -> bool:
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def select(changes: list[Change], prefixes: list[str]) -> list[Change]:
    """The changes named by `prefixes` (session paths; a dir names its subtree;
    a rename source names the rename), plus structural ancestors they need.
    An empty list selects everything. A prefix naming nothing is a UsageError."""
    if not prefixes:
        return list(changes)
    chosen: dict[int, Change] = {}
    for prefix in prefixes:
        hits = [c for c in changes if is_under(c.path, prefix)
                or (c.status == "R" and c.lower_path is not None
                    and is_under(c.lower_path, prefix))]
        if not hits:
            raise UsageError(f"no change at {prefix!r} in this session")
        for c in hits:
            chosen[id(c)] = c
    by_path: dict[str, list[Change]] = {}
    for c in changes:
        by_path.setdefault(c.path, []).append(c)
    renames = {c.lower_path: c for c in changes if c.status == "R" and c.kind == "dir"}
    # Changes whose content was copied up from another lower path (a file
    # renamed onto an existing name): deleting that path takes their base.
    based_on: dict[str, list[Change]] = {}
    for c in changes:
        if c.origin is not None and c.origin.path != c.path and c.kind != "dir":
            based_on.setdefault(c.origin.path, []).append(c)
    grown = True
    while grown:  # until every chosen change has what it needs
        before = len(chosen)
        for c in list(chosen.values()):
            for anc in _ancestors(c.path):
                for a in by_path.get(anc, []):
                    if a.structural:
                        chosen[id(a)] = a
            # placing at a renamed dir's old path needs the rename first
            r = renames.get(c.path)
            if r is not None and c.status != "D":
                chosen[id(r)] = r
            # a change to the lower entry at c.path (deleting it, replacing it, changing
            # its type or content) lands with the changes based on that entry: after it
            # they would find their base changed and be refused as conflicts
            for dep in based_on.get(c.path, []):
                chosen[id(dep)] = dep
            # and one that takes a lower tree away (deleting or replacing a dir,
            # moving it) with the changes based on any entry in that tree
            for root in _trees_taken(c):
                for origin, deps in based_on.items():
                    if is_under(origin, root):
                        for dep in deps:
                            chosen[id(dep)] = dep
        grown = len(chosen) != before
    picked = set(chosen)
    # A deletion of the lower entry at a path that something is placed on
    # (a rename target, a type change) must land with it.
    placed = {c.path for c in chosen.values() if c.status != "D"}
    extra = [c for c in changes if c.status == "D" and c.path in placed and id(c) not in picked]
    return sorted([*chosen.values(), *extra], key=lambda c: c.path)


def _trees_taken(c: Change) -> Iterator[str]:
    """The lower paths whose whole tree `c` takes away when it lands: a
    deleted or replaced entry's, a renamed entry's old one."""
    if c.status in ("D", "T"):
        yield c.path
    if c.status == "R" and c.lower_path is not None:
        yield c.lower_path


def _ancestors(path: str) -> Iterator[str]:
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])
