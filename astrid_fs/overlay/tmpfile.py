"""Unnamed files (O_TMPFILE) in the work dir, named once they are whole.

A copy (a copy-up's) is built as an unnamed file on the upper's
file system and then linked under its name: one linkat, which like a rename
shows readers no copy or a whole one, but never replaces an entry (a taken
name is `FileExistsError`) and leaves nothing behind when the daemon dies
before it (a named temp file would stay in the work dir until the next
mount). It is also cheaper than a named temp file and a rename (no entry in
the work dir, no cross-directory rename): measured in copyup.py.

Knows: how to make and name such a file. Does not know what goes in it.
Where the file system has no O_TMPFILE, `open_unnamed` says so and callers
fall back to a named temp file.

**Made ahead** (`make_ahead`; the mount's daemon asks with `make_ahead_later`,
so a mount starts it at its first copy-up and one that never copies up
holds no unnamed files): right after
mass deletions making the file is most of a copy-up's cost, since it
allocates an inode, which on ext4 without a journal (this project's
machines: see scripts/bench/fs_dataset.py) scans past every inode freed in
the last minutes (a copy-up makes one: its base content is an append to
the session's pack, basecontent.py).
So a thread keeps `AHEAD` unnamed files open for the work dir and
`open_unnamed` hands one out, while the thread makes the next on the other
CPU. It is a C thread where native/copyup_threads.c is built (cthreads.py).
Measured over 1,000 copy-ups through a mount (docs/benchmarks.md): after
deletions 374 ms with the C thread, 621 with a Python one, 958 with none.
On a settled disk it first measured no gain (2026-12-03, requests on
/dev/fuse: 191 ms with none, kernel overlayfs 190, 296 with the C thread
always on), so it worked only while making a file was slow; over io_uring
(the default since) it gains there too (2026-12-05: 294-301 ms always on
against 333-371 resting, kernel overlayfs 292-305), so it always works
unless `ASTRID_FS_COPYUP_THREADS=adaptive`. In that mode `open_unnamed`
times the files it makes itself (`NativeAhead.note`) so the thread knows
when to start.

A file made ahead is what `open_unnamed` would make (mode 0600, owner
root, empty); callers set owner, mode and times, and the link sets its
ctime. Held unnamed files cost nothing on disk but an inode
each, freed when the daemon exits (after a machine crash: by fsck or, with
a journal, at the next mount, as for any unnamed file).

A thread that cannot make a file stops for good where the file system has no
unnamed files; where it is full (ENOSPC, EDQUOT, out of inodes or fds) it
waits, and the next file a copy-up makes itself (`open_unnamed`, space back)
sets it going again.
"""

from __future__ import annotations

import collections
import errno
import os
import threading
import time
from typing import Any

from astrid_fs.overlay import cthreads

# What open(O_TMPFILE) fails with where the file system (or an old kernel,
# which reads the flag as O_DIRECTORY) cannot make unnamed files.
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)


#: Unnamed files kept made ahead (a burst of copy-ups drains them faster
#: than one thread makes them; beyond that, more only hold inodes).
AHEAD = 32


def _make(dir_path: bytes) -> int:
    # (read-write: a copy-up's file becomes the inode fd the daemon reads
    # and writes the copy through, OverlayCore.copy_up_open)
    return os.open(dir_path, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)


class Ahead:
    """Unnamed files made ahead for one directory, by one thread."""

    def __init__(self, dir_path: bytes, size: int) -> None:
        self.dir_path = dir_path
        self.size = size
        self.ready: collections.deque[int] = collections.deque()
        self.cond = threading.Condition()
        self.stopped = False
        self.failed: OSError | None = None  # why the thread stopped making
        self.counts = {"taken": 0, "made_on_request": 0, "resumed": 0}
        self.thread = threading.Thread(target=self._run, name="astrid-unnamed", daemon=True)

    def _run(self) -> None:
        while True:
            with self.cond:
                while len(self.ready) >= self.size and not self.stopped:
                    self.cond.wait()
                if self.stopped:
                    return
            try:
                fd = _make(self.dir_path)
            except OSError as e:  # no O_TMPFILE here, or full: made on request
                with self.cond:
                    self.failed = e
                    self.cond.notify_all()
                    if e.errno in _UNSUPPORTED:
                        return
                    # full: until a copy-up made a file itself (`resume`)
                    while self.failed is not None and not self.stopped:
                        self.cond.wait()
                continue
            with self.cond:
                self.ready.append(fd)
                self.cond.notify_all()

    def resume(self) -> None:
        """A file was made on request: a thread that stopped because the file
        system was full makes files again."""
        if self.failed is None:  # (read unlocked: every made-on-request file asks)
            return
        with self.cond:
            if self.failed is not None and self.failed.errno not in _UNSUPPORTED:
                self.failed = None
                self.counts["resumed"] += 1
                self.cond.notify_all()

    def take(self) -> int | None:
        with self.cond:
            fd = self.ready.popleft() if self.ready else None
            self.counts["taken" if fd is not None else "made_on_request"] += 1
            self.cond.notify_all()
        return fd

    def wait_full(self, timeout: float) -> bool:
        """For tests: block until `size` files wait (False on timeout or
        when the thread stopped)."""
        with self.cond:
            return self.cond.wait_for(
                lambda: len(self.ready) >= self.size or self.failed is not None,
                timeout) and self.failed is None

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        self.thread.join()
        while self.ready:
            os.close(self.ready.popleft())

    def stats(self) -> dict[str, Any]:
        with self.cond:
            out: dict[str, Any] = {**self.counts, "ready": len(self.ready)}
            if self.failed is not None:
                out["stopped"] = os.strerror(self.failed.errno or 0)
        return out


_ahead: dict[bytes, Ahead | NativeAhead] = {}
_later: set[bytes] = set()  # (make_ahead_later)


class NativeAhead:
    """`Ahead` done by a C thread (cthreads.py): the same interface."""

    def __init__(self, so: Any, handle: int, dir_path: bytes, size: int) -> None:
        self.so = so
        self.handle = handle
        self.dir_path = dir_path
        self.size = size

    @classmethod
    def start(cls, dir_path: bytes, size: int) -> NativeAhead | None:
        so = cthreads.lib()
        handle = so.astrid_ahead_start(dir_path, size) if so is not None else None
        return cls(so, handle, dir_path, size) if handle else None

    def take(self) -> int | None:
        fd = int(self.so.astrid_ahead_take(self.handle))
        return fd if fd >= 0 else None

    def resume(self) -> None:
        self.so.astrid_ahead_resume(self.handle)

    def wait_full(self, timeout: float) -> bool:
        return bool(self.so.astrid_ahead_wait_full(self.handle, int(timeout * 1000)))

    def stop(self) -> None:
        self.so.astrid_ahead_stop(self.handle)

    def note(self, ns: int) -> None:
        """A file made on request took `ns`: the thread works while that is slow."""
        self.so.astrid_make_note(ns)

    def stats(self) -> dict[str, Any]:
        taken, on_request, resumed, ready, failed = cthreads.counters(
            self.so.astrid_ahead_stats, self.handle, 5)
        out: dict[str, Any] = {"taken": taken, "made_on_request": on_request,
                               "resumed": resumed, "ready": ready, "thread": "C",
                               **cthreads.make_stats()}
        if failed:
            out["stopped"] = os.strerror(failed)
        return out


def make_ahead(dir_path: bytes, size: int = AHEAD, *,
               native: bool = True) -> Ahead | NativeAhead:
    """Keep `size` unnamed files made ahead for `dir_path` (the daemon's work
    dir) from now on; `open_unnamed` there takes them. Made by a C thread
    where the library is built (`native=False`: a Python thread anyway)."""
    ahead = _ahead.get(dir_path)
    if ahead is None:
        ahead = NativeAhead.start(dir_path, size) if native else None
        if ahead is None:
            ahead = Ahead(dir_path, size)
            ahead.thread.start()
        _ahead[dir_path] = ahead
    return ahead


def make_ahead_later(dir_path: bytes) -> None:
    """`make_ahead` for `dir_path` at its first `open_unnamed`: a mount that
    never copies up holds no unnamed files (`AHEAD` inodes and fds)."""
    if dir_path not in _ahead:
        _later.add(dir_path)


def ahead_for(dir_path: bytes) -> Ahead | NativeAhead | None:
    """The files made ahead for `dir_path`, once started."""
    return _ahead.get(dir_path)


def stop_ahead(dir_path: bytes) -> None:
    _later.discard(dir_path)
    ahead = _ahead.pop(dir_path, None)
    if ahead is not None:
        ahead.stop()


def open_unnamed(dir_path: bytes) -> int | None:
    """A read-write fd of a new unnamed regular file (mode 0600) on the file
    system of `dir_path`; None where that file system cannot make one."""
    ahead = _ahead.get(dir_path)
    if ahead is None and dir_path in _later:
        _later.discard(dir_path)
        ahead = make_ahead(dir_path)  # (this file is made here; the next ones ahead)
    if ahead is not None:
        fd = ahead.take()
        if fd is not None:
            return fd
    started = time.perf_counter_ns()
    try:
        fd = _make(dir_path)
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return None
        raise
    if isinstance(ahead, NativeAhead):  # (it works while this is slow)
        ahead.note(time.perf_counter_ns() - started)
    if ahead is not None:  # (a thread stopped by a full disk makes files again)
        ahead.resume()
    return fd


def link(fd: int, path: bytes) -> None:
    """Give the unnamed file `fd` the name `path` (same mount; its parent
    exists). FileExistsError if `path` is taken: nothing is replaced."""
    # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N, as open(2) shows for
    # O_TMPFILE (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH). Python's
    # os.link calls link(2), which does not follow that magic link (EXDEV),
    # unless a dir fd is given: the source path is absolute, so linkat
    # ignores the dir fd passed (any open fd does).
    os.link(b"/proc/self/fd/%d" % fd, path, src_dir_fd=fd, follow_symlinks=True)
