"""One commit at a time per project, across processes and sessions.

The session's own journal lock (journal.locked) keeps two commands of one
session apart; two sessions over one project need a lock that belongs to
neither: a flock on a file named after the project (a local directory, or
a mounted source such as `s3://bucket/prefix`) in a directory shared by
every session. Paths nest (a session over /p and one over /p/sub touch the
same files), so a key is locked exclusively and each of its ancestors
shared: two commits conflict exactly when one's project contains the
other's. Locks are taken in sorted order (ancestors sort first), so two
committers never wait on each other in a cycle. The kernel drops a flock
when its holder dies: a killed commit never leaves the project locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

LOCK_DIR_ENV = "ASTRID_FS_LOCK_DIR"
_SYSTEM_DIR = Path("/run/lock/astrid-fs")


def lock_dir(home: Path) -> Path:
    """$ASTRID_FS_LOCK_DIR, else /run/lock/astrid-fs (shared by every
    $ASTRID_HOME on the machine) where it can be made, else `home`/locks."""
    env = os.environ.get(LOCK_DIR_ENV)
    candidates = [Path(env)] if env else [_SYSTEM_DIR, home / "locks"]
    for d in candidates:
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            if d == _SYSTEM_DIR and d.stat().st_uid == os.geteuid():
                # shared by every user's sessions, like /tmp (umask would narrow mkdir's mode)
                os.chmod(d, 0o1777)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d
    raise OSError(f"no writable lock directory among {', '.join(map(str, candidates))}")


def project_key(source: str) -> str:
    """A canonical key: a local dir by its resolved path, a URL as written
    without trailing slashes."""
    if "://" in source:
        return source.rstrip("/")
    return str(Path(source).resolve())


def _ancestors(key: str) -> list[str]:
    scheme, sep, rest = key.partition("://")
    if not sep:
        scheme, rest = "", key
    parts = [p for p in rest.split("/") if p]
    prefix = f"{scheme}://" if sep else "/"
    return [prefix + "/".join(parts[:i]) for i in range(1 if sep else 0, len(parts))]


def _plan(keys: Iterable[str]) -> list[tuple[str, bool]]:
    """(key, exclusive) to lock, sorted, each key once (exclusive wins)."""
    want: dict[str, bool] = {}
    for key in keys:
        want[key] = True
        for parent in _ancestors(key):
            want.setdefault(parent, False)
    return sorted(want.items())


@contextlib.contextmanager
def project_locked(sources: Iterable[str], home: Path,
                   on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the commit lock of every project in `sources` (local dirs or
    URLs); waits for a commit that holds one, calling `on_wait(key)` first."""
    directory = lock_dir(home)
    fds: list[int] = []
    try:
        for key, exclusive in _plan(project_key(s) for s in sources):
            name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock"
            # (flock needs no write access: any user can lock a file another made)
            fd = os.open(directory / name, os.O_RDONLY | os.O_CREAT, 0o644)
            fds.append(fd)
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(key)
                fcntl.flock(fd, mode)
        yield
    finally:
        for fd in fds:
            os.close(fd)
