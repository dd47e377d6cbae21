"""Conflicts: has the lower entry a change was based on moved on since?

Judged first from the change's `origin` fingerprint (recorded at copy-up),
then, for every lower entry the change replaces, deletes or hides without
having copied it (an editor's save over it, `rm`, `mv` over it, an opaque
dir, an add where the project added the same name), from the session's base
index (bases.py). A change with neither has an unknown base and never
conflicts. See docs/design/journal.md, "Base fingerprints and conflicts".
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

from astrid_fs.overlay.basepack import Pack
from astrid_fs.overlay.layers import lstat_or_none
from astrid_fs.overlay.whiteout import kind_of_mode
from astrid_fs.review.bases import Base, BaseIndex, Unknown, same_local, walk_local
from astrid_fs.review.changes import Change, file_blake3


def check_conflicts(changes: list[Change], lower: str | os.PathLike[str],
                    index: BaseIndex | None = None, kept: Pack | None = None) -> list[Change]:
    """The same changes, each with `conflict` set when the lower entry it was
    based on (its origin fingerprint, else its row in the base `index`) has
    changed since. With neither the base is unknown and no conflict can be
    seen (kernel overlayfs copy-ups, sessions older than the index).

    No false alarms where nothing of the project's can be lost: a file the
    session holds byte for byte as the project holds it now (only its time
    differs: both made the same edit) never conflicts, and a project file
    whose fingerprint moved while its bytes stayed those of the base
    (`kept`: the session's base-content pack, overlay/basepack.py; a checkout or a
    save of the same text) has not changed."""
    root = os.fspath(lower)
    return [replace(c, conflict=None if _holds_the_projects_bytes(c) else (
        conflict_of(c, root, kept) or base_conflict(c, root, index, kept)),
                    index_base=_index_base(c, index))
            for c in changes]


def _holds_the_projects_bytes(change: Change) -> bool:
    """Is the session's file the project's current file but for its times?"""
    return (change.kind == "file" and change.status in ("M", "U")
            and change.lower_path is not None and set(change.flags) <= {"mtime"})


def same_as_kept(kept: Pack | None, path: str, base_size: int | None,
                 base_mtime_ns: int | None, base_mode: int | None, lower_file: str,
                 now: os.stat_result) -> bool:
    """Does the lower file `lower_file` (stat `now`) hold the base's bytes
    and mode, though its fingerprint moved? Only where the base content
    kept for `path` is that base's version (same size and mtime)."""
    if kept is None or base_size is None or not stat.S_ISREG(now.st_mode) \
            or now.st_size != base_size or (base_mode is not None and now.st_mode != base_mode):
        return False
    found = kept.read(os.fsencode(path))
    if found is None or (found[0].size, found[0].mtime_ns) != (base_size, base_mtime_ns):
        return False
    return _file_holds(lower_file, found[1])


def _file_holds(path: str, body: bytes) -> bool:
    """Does the file at `path` hold exactly `body`?"""
    try:
        with open(path, "rb") as f:
            return f.read(len(body) + 1) == body
    except OSError:
        return False


def _index_base(change: Change, index: BaseIndex | None) -> Base | None:
    """The index row the change is judged by (for `diff --json`); an entry
    absent from the base reads as kind "absent"."""
    if index is None or change.origin is not None:
        return None
    path = change.path if change.status == "A" else change.lower_path
    if path is None:
        return None
    found = index.lookup(path)
    if isinstance(found, Unknown):
        return None
    return Base("absent") if found is None else found


UNMERGED = "unmerged.json"  # in the session dir: paths a merge left with markers
MARKER = b"<<<<<<< "
_MARKER_SCAN = 8 << 20


def unmerged_paths(session_root: Path) -> set[str]:
    """Paths a merge (resolve.py) left with conflict markers."""
    try:
        return set(json.loads((session_root / UNMERGED).read_text()))
    except FileNotFoundError:
        return set()


def check_markers(changes: list[Change], session_root: Path, upper: Path) -> list[Change]:
    """A change a merge left with conflict markers stays in conflict until
    the markers are gone from the file (or it is resolved --ours/--theirs)."""
    left = unmerged_paths(session_root)
    if not left:
        return changes
    return [replace(c, conflict=_markers(upper / c.path))
            if c.path in left and not c.conflict else c for c in changes]


def _markers(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            body = f.read(_MARKER_SCAN)
    except OSError:
        return None
    if body.startswith(MARKER) or b"\n" + MARKER in body:
        return "has merge conflict markers (edit them out, or resolve --ours/--theirs)"
    return None


def base_conflict(change: Change, lower: str, index: BaseIndex | None,
                  kept: Pack | None = None) -> str | None:
    """Why the lower entry `change` replaces, deletes or hides (where its
    origin does not already vouch for it) differs from the session's base."""
    if index is None:
        return None
    if change.status == "R" and change.path != change.lower_path:
        # A rename lands over its target too: what the project held there
        # (deleted or added since the base) is replaced as well.
        tst = lstat_or_none(os.path.join(lower, change.path))
        why = _differs(change.path, index.lookup(change.path),
                       None if tst is None else Base.of_stat(tst))
        if why is not None:
            return why
    path = change.path if change.status == "A" else change.lower_path
    if path is None or (change.origin is not None and change.origin.path == path):
        return None
    st = lstat_or_none(os.path.join(lower, path))
    base = index.lookup(path)
    why = _differs(path, base, None if st is None else Base.of_stat(st))
    if why is not None and not (isinstance(base, Base) and st is not None and same_as_kept(
            kept, path, base.size, base.mtime_ns, base.mode, os.path.join(lower, path), st)):
        return why
    why = moved_since_hidden(path, kept, os.path.join(lower, path), st)
    if why is not None:
        return why
    if ((change.status == "D" and change.kind == "dir")
            or (change.status == "T" and change.old_kind == "dir")):
        # A deleted or replaced tree takes every entry below it along.
        for sub, now in walk_local(Path(lower), path):
            if sub != path:
                why = _differs(sub, index.lookup(sub), now)
                if why is not None:
                    return why
    return None


def moved_since_hidden(path: str, kept: Pack | None, lower_file: str,
                       now: os.stat_result | None) -> str | None:
    """Why the project's file at `path` is no longer what the session hid
    there. The overlay keeps a lower file's content, with its mtime, when
    the session first hides it without a copy-up vouching for the change
    (an `rm`, an editor's save over it: overlay/basecontent.py). That is
    what the session saw and replaced, and it can be newer than the base
    index's row (the project's file as the session began): a file the user
    added or edited after the session began. Before, an editor's save over
    a file the user added later, then deleted, landed without a conflict
    (the index said absent then and absent now). Content the review put
    (mtime 0: a merge's or `resolve`'s new base) claims no lower version."""
    if kept is None:
        return None
    claim = kept.claim(os.fsencode(path))
    if claim is None or claim.mtime_ns == 0:
        return None
    if now is None:
        return f"{path} was deleted from the project since the session replaced it"
    if not stat.S_ISREG(now.st_mode):
        return f"{path} changed type in the project since the session replaced it"
    if (now.st_size, now.st_mtime_ns) == (claim.size, claim.mtime_ns):
        return None
    found = kept.read(os.fsencode(path))
    # (a body that did not survive a crash gives nothing to judge by;
    # touched but the same bytes is no change)
    if found is None or _file_holds(lower_file, found[1]):
        return None
    return f"{path} changed in the project since the session replaced it"


def _differs(path: str, base: Base | Unknown | None, now: Base | None) -> str | None:
    if isinstance(base, Unknown) or same_local(base, now):
        return None
    if base is None:
        return f"{path} was added to the project since the session began"
    if now is None:
        return f"{path} was deleted from the project since the session began"
    return f"{path} changed in the project since the session began"


def conflict_of(change: Change, lower: str, kept: Pack | None = None) -> str | None:
    """Why `change` conflicts with the lower layer as it is now, or None."""
    if change.status == "R" and change.kind == "dir" and change.lower_path is not None:
        st = lstat_or_none(os.path.join(lower, change.lower_path))
        if st is None or not stat.S_ISDIR(st.st_mode):
            return f"rename source {change.lower_path} is gone from the lower layer"
    origin = change.origin
    if origin is None:
        return None
    st = lstat_or_none(os.path.join(lower, origin.path))
    if (change.lower_path is not None and change.lower_path != origin.path
            and (st is None or st.st_ino != origin.ino)):
        # The entry's dir was renamed in the lower since copy-up (by a commit
        # of that rename): the base now lives at the walk's lower path.
        moved = lstat_or_none(os.path.join(lower, change.lower_path))
        if moved is not None and moved.st_ino == origin.ino:
            st = moved
    if st is None:
        return f"lower {origin.path} was deleted since the session copied it"
    if kind_of_mode(st.st_mode) != origin.kind:
        return f"lower {origin.path} changed type since the session copied it"
    if origin.kind == "dir":
        return None if st.st_ino == origin.ino else f"lower {origin.path} was replaced"
    unchanged = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode) == (
        origin.ino, origin.size, origin.mtime_ns, origin.mode)
    if unchanged:
        return None
    if (origin.blake3 is not None and origin.kind == "file" and st.st_size == origin.size
            and file_blake3(os.path.join(lower, origin.path)) == origin.blake3
            and st.st_mode == origin.mode):
        return None
    if origin.kind == "file" and same_as_kept(kept, origin.path, origin.size, origin.mtime_ns,
                                              origin.mode, os.path.join(lower, origin.path), st):
        return None
    return f"lower {origin.path} changed since the session copied it"
