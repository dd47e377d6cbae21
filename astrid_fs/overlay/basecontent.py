"""Base content: what a project file held when the session first hid it.

A three-way merge of a conflict (review/resolve.py) needs the project's
version the session started from, but the lower layer only keeps the
newest one. So when the overlay first replaces a regular lower file of at
most `LIMIT` bytes (a copy-up, an `rm`, an editor's rename over it), it
keeps that file's content as `SESSION/base-content/PATH` (PATH: the lower
path, as the review names it). The first copy stands: a later hide of the
same path (the session deleted, then re-created it) keeps it. The review
removes the copies of paths that land or are discarded.

Knows: where the copies live, and how to write one atomically (an unnamed
file in the work dir, same filesystem, linked into place: tmpfile.py; the
link fails where a copy stands). Does not know: when a path is hidden
(copyup.py, namespace.py call `keep`) nor how merges use the copy.
Only session mounts keep base content: the work dir is `SESSION/work/astrid`
of a session that records a base (`bases.sqlite`); a plain
lower/upper/work mount keeps none. Keeping is best-effort: a copy that
cannot be written (disk full) leaves no file, and the merge then takes an
empty base (every difference becomes a conflict region; nothing is lost).

A copy is linked into place whole but not fsync'd (measured over 500
appends to 4 KB files through a mount, on a busy 2-core box: a copy-up
took 9.3 ms without keeping, 15.5 ms keeping with an fsync, 10.4 ms
keeping without one). A crash can then leave a copy empty or short, not
other bytes in place of its own (the kernel writes data before the size
that exposes it: ext4's data=ordered, XFS): a merge over such a base puts
markers where it cannot tell (nothing lost), and the review's same-bytes
check (conflicts.py) needs the copy's size and mtime to equal the base's.

**Written off the request path** (`start_writer`, by the mount's daemon): a
copy-up has the base content in hand (it read the file to copy it), so it
hands the bytes to a C thread that writes the copy (`keep_bytes`;
native/copyup_threads.c, where built: cthreads.py), and the request is
answered without a second unnamed file and link. Only while making a file is
slow (after mass deletions): on a quick disk the copy-up writes its copy
itself, cheaper than any thread beside it (tmpfile.py has the numbers). The
bytes are the ones the copy-up read, so a project file changed meanwhile
cannot slip in. A path whose copy is queued counts as kept (the first copy
stands); the review's `sync` request makes the daemon wait for the queue
(`flush`) before it reads the store, and a clean unmount waits for it too. A
daemon killed with copies queued loses them: the merge then takes an empty
base, as for any copy not kept. At most `PENDING_BYTES` wait; beyond that a
copy-up writes its copy itself.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import stat
from collections.abc import Callable
from typing import Any

from astrid_fs.overlay import cthreads, tmpfile

LIMIT = 8 << 20  # larger files are not merged, so their base is not kept
PENDING_BYTES = 64 << 20  # most base content queued for the writer thread
DIR_NAME = b"base-content"
_INDEX_NAME = b"bases.sqlite"  # (review/bases.py)
_counter = itertools.count()


def store_for(tmp_dir: bytes) -> bytes | None:
    """`SESSION/base-content` when `tmp_dir` is a session's copy-up dir
    (`SESSION/work/astrid`) and the session records a base; else None."""
    paths = _session_paths(tmp_dir)
    if paths is None or not os.path.exists(paths[0]):
        return None
    return paths[1]


@functools.lru_cache(maxsize=16)
def _session_paths(tmp_dir: bytes) -> tuple[bytes, bytes] | None:
    """(`SESSION/bases.sqlite`, `SESSION/base-content`) if `tmp_dir` is
    named as a session's copy-up dir (path arithmetic only: asked on every
    copy-up, by a daemon that has one work dir)."""
    work = os.path.dirname(tmp_dir)
    if os.path.basename(work) != b"work":
        return None
    root = os.path.dirname(work)
    return root + b"/" + _INDEX_NAME, root + b"/" + DIR_NAME


def wanted(st: os.stat_result | None) -> bool:
    """Is a lower entry with this stat one whose content is kept?"""
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_size <= LIMIT


def keep(tmp_dir: bytes, lower_rel: bytes, fill: Callable[[int], None],
         mtime_ns: int) -> None:
    """Keep the base content of lower path `lower_rel` unless it is kept
    already: `fill(fd)` writes the content into a fresh temp file, which
    takes the lower file's `mtime_ns` (its size and mtime then tell which
    version of the lower it holds) and is linked into the store."""
    store = store_for(tmp_dir)
    if store is None or not lower_rel:
        return
    out = store + b"/" + lower_rel
    writer = _writers.get(tmp_dir)
    if writer is not None and writer.queued(out):
        return  # the first copy stands
    if os.path.lexists(out):  # (before `fill`, which may read a big file)
        return
    _put(tmp_dir, out, fill, mtime_ns)


def keep_bytes(tmp_dir: bytes, lower_rel: bytes, content: bytes, mtime_ns: int) -> None:
    """`keep` with the content in hand (a copy-up read it): no look first,
    a copy kept already makes the link fail and stands. Written by the
    mount's writer thread where one runs (and has room), else here."""
    store = store_for(tmp_dir)
    if store is None or not lower_rel:
        return
    out = store + b"/" + lower_rel
    writer = _writers.get(tmp_dir)
    if writer is not None and writer.put(out, content, mtime_ns):
        return
    _put(tmp_dir, out, write_bytes(content), mtime_ns)


def _put(tmp_dir: bytes, out: bytes, fill: Callable[[int], None], mtime_ns: int) -> None:
    """Write the copy at `out` unless a copy is there (best-effort)."""
    try:
        fd = tmpfile.open_unnamed(tmp_dir)
        if fd is None:
            _put_named(tmp_dir, out, fill, mtime_ns)
            return
        try:
            fill(fd)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            try:
                tmpfile.link(fd, out)
            except FileNotFoundError:  # the first copy in its directory
                os.makedirs(os.path.dirname(out), exist_ok=True)
                tmpfile.link(fd, out)
        finally:
            os.close(fd)
    except FileExistsError:
        pass  # the first copy stands
    except OSError:
        pass  # best-effort (see the module docstring): no copy is a safe outcome


def _put_named(tmp_dir: bytes, out: bytes, fill: Callable[[int], None],
               mtime_ns: int) -> None:
    """`_put` where the work dir's file system has no unnamed files: a named
    temp file, renamed into place unless a copy is there."""
    if os.path.lexists(out):
        return
    tmp = b"%s/base-%d-%d" % (tmp_dir, os.getpid(), next(_counter))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fill(fd)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        try:
            os.rename(tmp, out)
        except FileNotFoundError:  # the first copy in its directory
            os.makedirs(os.path.dirname(out), exist_ok=True)
            os.rename(tmp, out)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(content: bytes) -> Callable[[int], None]:
    """A `fill` that writes `content` (already read, at most LIMIT bytes)."""
    def fill(fd: int) -> None:
        if content:
            os.pwrite(fd, content, 0)
    return fill


def copy_from(path: bytes) -> Callable[[int], None]:
    """A `fill` that copies the regular file at `path` (up to LIMIT bytes)."""
    def fill(fd: int) -> None:
        src = os.open(path, os.O_RDONLY)
        try:
            offset = 0
            while offset <= LIMIT:
                chunk = os.pread(src, 1 << 20, offset)
                if not chunk:
                    break
                os.pwrite(fd, chunk, offset)
                offset += len(chunk)
        finally:
            os.close(src)
    return fill


def keep_local(tmp_dir: bytes, lower_rel: bytes, lower_path: bytes) -> None:
    """Keep the base content of a local lower file about to be hidden."""
    try:
        st = os.lstat(lower_path)
    except OSError:
        return
    if wanted(st):
        keep(tmp_dir, lower_rel, copy_from(lower_path), st.st_mtime_ns)


class Writer:
    """Base content written by a C thread (native/copyup_threads.c), in the
    order it was handed over (module docstring)."""

    def __init__(self, so: Any, handle: int) -> None:
        self.so = so
        self.handle = handle

    @classmethod
    def start(cls, tmp_dir: bytes, limit: int) -> Writer | None:
        so = cthreads.lib()
        handle = so.astrid_base_start(tmp_dir, limit) if so is not None else None
        return cls(so, handle) if handle else None

    def put(self, out: bytes, content: bytes, mtime_ns: int) -> bool:
        """Queue a copy of `content` for `out` (a copy queued for it already
        stands); False: not taken (full, stopped), the caller writes it."""
        return int(self.so.astrid_base_put(self.handle, out, content, len(content),
                                           mtime_ns)) >= 0

    def queued(self, out: bytes) -> bool:
        return bool(self.so.astrid_base_queued(self.handle, out))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every copy handed over so far is written (False on
        timeout)."""
        return bool(self.so.astrid_base_flush(
            self.handle, -1 if timeout is None else int(timeout * 1000)))

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self.so.astrid_base_stop(self.handle)

    def stats(self) -> dict[str, int]:
        keys = ("queued", "written", "written_inline", "dropped", "pending", "pending_bytes")
        return dict(zip(keys, cthreads.counters(self.so.astrid_base_stats, self.handle, 6),
                        strict=True))


_writers: dict[bytes, Writer] = {}


def start_writer(tmp_dir: bytes, limit: int = PENDING_BYTES) -> Writer | None:
    """Start the thread that writes base content for the copy-ups of work
    dir `tmp_dir`; None where `tmp_dir` keeps no base content (not a
    session's) or the library is not built (copy-ups then write it)."""
    if store_for(tmp_dir) is None:
        return None
    writer = _writers.get(tmp_dir)
    if writer is None:
        writer = Writer.start(tmp_dir, limit)
        if writer is not None:
            _writers[tmp_dir] = writer
    return writer


def flush(tmp_dir: bytes) -> None:
    """Wait for the copies queued for `tmp_dir` (no-op without a writer)."""
    writer = _writers.get(tmp_dir)
    if writer is not None:
        writer.flush()


def stop_writer(tmp_dir: bytes) -> None:
    writer = _writers.pop(tmp_dir, None)
    if writer is not None:
        writer.stop()
