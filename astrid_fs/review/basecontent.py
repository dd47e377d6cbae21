"""The review's side of base content (overlay/basecontent.py keeps it):
reading the project's version a session started from, replacing it when
the base moves (resolve --ours, a merge, update), and forgetting it when a
path leaves the session (commit, discard, rollback).

Keys are lower (project) paths, as the overlay writes them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from astrid_fs.durable import write_atomic
from astrid_fs.overlay.basecontent import DIR_NAME, LIMIT
from astrid_fs.session import Session

__all__ = ["LIMIT", "forget", "forget_all", "path_of", "prune", "read", "replace"]


def store(session: Session) -> Path:
    return session.root / os.fsdecode(DIR_NAME)


def path_of(session: Session, lower_path: str) -> Path:
    return store(session) / lower_path


def read(session: Session, lower_path: str) -> bytes | None:
    """The kept base content of `lower_path`, or None if none was kept."""
    try:
        return path_of(session, lower_path).read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def replace(session: Session, lower_path: str, body: bytes | None) -> None:
    """Make `body` the base content of `lower_path` (None: keep none)."""
    out = path_of(session, lower_path)
    if body is None or len(body) > LIMIT:
        _remove(out)
        return
    with contextlib.suppress(FileExistsError):
        out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    write_atomic(out, body)


def forget(session: Session, paths: Iterable[str]) -> None:
    """Drop the kept content at and below each of `paths` (they left the
    session: landed, or discarded). Repeating it is harmless."""
    root = store(session)
    if not root.is_dir():
        return
    for path in paths:
        if path:
            _remove(root / path)
        else:
            forget_all(session)
            return


def forget_all(session: Session) -> None:
    shutil.rmtree(store(session), ignore_errors=True)


def prune(session: Session, keep: Iterable[str]) -> None:
    """Drop every kept file whose path is not in `keep` (the lower paths
    the session still changes), e.g. after a rollback dropped changes."""
    root = store(session)
    if not root.is_dir():
        return
    wanted = set(keep)
    for here, dirs, files in os.walk(root, topdown=False):
        rel = os.path.relpath(here, root)
        for name in files:
            path = name if rel == "." else f"{rel}/{name}"
            if path not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(here, name))
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(here, name))


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except (FileNotFoundError, NotADirectoryError):
        pass
