"""Copy-ups without an fsync each, and the check that makes that safe.

A copy-up (copyup.py) builds its copy in the work dir, a regular file as
an unnamed (O_TMPFILE) file linked into the upper layer once whole, anything
else as a temp file renamed there. The link (or rename) is atomic for the
running system: a daemon killed with -9 leaves either no upper copy (at most
a temp file, removed at the next mount) or a whole one, with or without an
fsync, because the page cache outlives the process. Only a crash of the
machine (power loss, kernel panic) can lose data the daemon wrote; on ext4
(data=ordered, delayed allocation) the link or rename may then reach the
disk before the copy's data, and the upper copy comes back empty, short or
zero-filled. Kernel overlayfs
fsyncs each copy-up against that (unless mounted `volatile`, which instead
refuses to mount again after a crash); an fsync costs 0.2-0.4 ms here, half
of a copy-up.

So a mount copies up without fsync and arms a marker instead: before it
serves, `arm` writes `WORK/astrid-unsynced` holding the boot id, durably;
`disarm` (clean unmount) syncs the upper's file system, then removes it. A
marker found at mount time says the last mount did not end cleanly:

- same boot id: the daemon died but the machine did not, so every copy it
  put in place is whole (page cache): nothing to check;
- another boot id: the machine went down while copy-ups may not have been
  on disk. `check_upper` then looks at every upper regular file whose
  origin xattr names a local lower file:
  - its mtime still equals the origin's (no later write of it reached the
    disk, since the journal keeps metadata in order): it must hold exactly
    the lower's bytes; if not, it is a torn copy and is copied up again
    (the state a plain file system gives for writes that were never
    fsync'd: the file as it was), provided the lower still matches the
    origin (size, mtime); else it is reported;
  - its mtime moved and its ctime is newer than the marker: it was written
    in the crashed mount, and its data may be torn as any unsynced write's
    may: reported (a warning in the daemon log), never changed.

What this does not cover: remote trees (their copy-ups keep their fsync:
the lower is not at hand to compare with); a hard-linked upper copy is
re-copied under the name checked only. Commit needs nothing from here: it
reads upper files through the page cache and syncs both file systems
(review/journal.py, `sync_fs`), after which every copy-up so far is on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from astrid_fs.overlay.layers import same_content
from astrid_fs.overlay.whiteout import Origin, OverlayXattrs, get_origin

log = logging.getLogger("astrid_fs.overlay.unsynced")

MARKER = b"astrid-unsynced"
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """This boot's id ('' where the kernel has none: then every unclean
    end counts as a crash)."""
    try:
        with open(_BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return ""


def marker_path(work_dir: bytes) -> bytes:
    return os.path.join(work_dir, MARKER)


def crashed(work_dir: bytes, current_boot: str) -> os.stat_result | None:
    """The marker's stat when a mount of this work dir ended with the machine
    going down (marker from another boot), else None."""
    path = marker_path(work_dir)
    try:
        with open(path, "rb") as f:
            recorded = f.read().decode(errors="replace").strip()
            st = os.fstat(f.fileno())
    except FileNotFoundError:
        return None
    return st if recorded != current_boot or not current_boot else None


def arm(work_dir: bytes, current_boot: str) -> None:
    """Record, durably, that copy-ups from now on may not be on disk."""
    path = marker_path(work_dir)
    tmp = path + b".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, current_boot.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    _fsync_dir(work_dir)


def disarm(work_dir: bytes, upper: bytes) -> None:
    """After a clean unmount: make every copy-up durable, then drop the marker."""
    _syncfs(upper)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker_path(work_dir))
    _fsync_dir(work_dir)


@dataclass(frozen=True)
class Checked:
    """What `check_upper` found: copies it restored from the lower, and
    files it left as they are but whose data may be torn."""

    restored: tuple[bytes, ...]
    suspect: tuple[bytes, ...]


def check_upper(upper: bytes, names: OverlayXattrs, since: os.stat_result,
                lower_path: Callable[[bytes], bytes | None],
                recopy: Callable[[bytes, bytes, bytes], None]) -> Checked:
    """After a crash: restore torn copy-ups in `upper` (see the module
    docstring); `since` is the marker's stat (files not changed since it was
    armed were on disk before). `lower_path(rel)` is the local lower file of
    a lower path (None: not local); `recopy(lower, rel, dest)` copies lower
    file `lower` (lower path `rel`) up again over the upper file `dest`."""
    restored: list[bytes] = []
    suspect: list[bytes] = []
    for rel, path, st in _upper_files(upper):
        if st.st_ctime_ns < since.st_mtime_ns:
            continue  # unchanged since before the crashed mount: on disk
        origin = get_origin(path, names)
        if origin is None or origin.kind != "file":
            continue
        verdict = _verdict(path, st, origin, lower_path)
        if verdict is None:
            continue
        if verdict == "restore":
            lower = lower_path(os.fsencode(origin.path))
            assert lower is not None
            recopy(lower, os.fsencode(origin.path), path)
            restored.append(rel)
        else:
            suspect.append(rel)
    return Checked(tuple(restored), tuple(suspect))


def _verdict(path: bytes, st: os.stat_result, origin: Origin,
             lower_path: Callable[[bytes], bytes | None]) -> str | None:
    """None: whole; "restore": a torn copy to redo; "suspect": leave, report."""
    if st.st_mtime_ns != origin.mtime_ns:
        return "suspect"  # written in the crashed mount
    lower = lower_path(os.fsencode(origin.path))
    lst = None
    if lower is not None:
        with contextlib.suppress(OSError):
            lst = os.lstat(lower)
    if lst is None or (lst.st_size, lst.st_mtime_ns) != (origin.size, origin.mtime_ns):
        # The lower moved on: nothing to compare with. Only a wrong size is
        # a sure sign of a torn copy.
        return "suspect" if st.st_size != origin.size else None
    assert lower is not None
    same = st.st_size == lst.st_size and same_content(path, lower)
    return None if same else "restore"




def _upper_files(upper: bytes) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
    """(relative path, path, lstat) of every regular file in the upper."""
    stack = [b""]
    while stack:
        rel_dir = stack.pop()
        d = upper + b"/" + rel_dir if rel_dir else upper
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            raise
        for entry in entries:
            rel = rel_dir + b"/" + entry.name if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(rel)
            elif stat.S_ISREG(st.st_mode):
                yield rel, entry.path, st


def _fsync_dir(path: bytes) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(path: bytes) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fsdecode(path))
    finally:
        os.close(fd)
