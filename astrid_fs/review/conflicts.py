"""Conflicts: has the lower entry a change was based on moved on since?

Judged from the change's `origin` fingerprint alone (recorded at copy-up);
a change without one has an unknown base and never conflicts. See
docs/design/journal.md, "Base fingerprints and conflicts".
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace

from astrid_fs.overlay.layers import lstat_or_none
from astrid_fs.overlay.whiteout import kind_of_mode
from astrid_fs.review.changes import Change, file_blake3


def check_conflicts(changes: list[Change], lower: str | os.PathLike[str]) -> list[Change]:
    """The same changes, each with `conflict` set when the lower entry it was
    based on (its origin fingerprint) has changed since. Without an origin the
    base is unknown and no conflict can be seen (kernel overlayfs copy-ups)."""
    root = os.fspath(lower)
    return [replace(c, conflict=conflict_of(c, root)) for c in changes]


def conflict_of(change: Change, lower: str) -> str | None:
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
    return f"lower {origin.path} changed since the session copied it"
