"""Counting a session's changes from its upper layer alone (for status)."""

from __future__ import annotations

import os
import stat

from astrid_fs.session import Session
from astrid_fs.whiteout import get_origin, get_redirect, is_opaque


def count_changes(session: Session) -> int:
    """Entries the session changed: every non-directory in the upper layer
    (files, links, whiteouts) and the directories that are new, opaque or
    redirected; plain copied-up parent directories do not count."""
    names = session.xattrs
    total = 0
    for root, dirs, files in os.walk(session.upper):
        total += len(files)
        for name in dirs:
            path = os.path.join(root, name)
            created = get_origin(path, names) is None
            if (stat.S_ISLNK(os.lstat(path).st_mode) or created or is_opaque(path, names)
                    or get_redirect(path, names) is not None):
                total += 1
    return total
