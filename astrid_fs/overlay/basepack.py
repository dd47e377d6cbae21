"""The base-content pack: a session's kept base content in one append-only file.

`SESSION/base-content.pack` holds what basecontent.py keeps (the project's
version of a file the session hid, for three-way merges) as records, so
that keeping one is a write to an open file rather than a file of its own:
on this project's machines a file create costs ext4 hundreds of µs of system
time, and a copy-up made two (its copy and the base's), where kernel
overlayfs makes one (docs/benchmarks.md, "Base content in one pack").

A record is a header (`_HEAD`: magic, kind, lengths, the lower file's
mtime, a CRC-32 of the body and one of the header and path), the path (a
lower path, as the review names it) and the body. Read in order they give
the live content:

- KEEP (the mount's): the path's content, unless it has content already
  (the first copy stands);
- PUT (the review's): the path's content from now on;
- DROP (the review's): nothing at the path or below it (b"": nothing at all);
- MOVED (a compaction's, last in the file it left): reopen the path.

Knows: the file format, the lock, and how to make the file end at a record
boundary again. Does not know when content is kept or what merges do with it
(basecontent.py, review/basecontent.py).

**Writers** append one record (or one batch) per write(2), under an
exclusive `flock` of the file, after catching up with what others appended
(`_catch_up`): the mount keeps its index of the live paths in memory and
reads only the records others added since. Whoever holds the lock first
cuts off a tail that does not check out (a writer killed inside its write,
a machine crash before the data reached the disk): its header fails its
CRC or its lengths run past the end. Records after a torn one are lost with
it; a lost base makes a merge take an empty base (every difference a
conflict region; nothing of the session's or the project's is lost), as for
any content not kept. The mount does not fsync its records (copy-ups do not
either: unsynced.py); the review fsyncs its own, since a DROP that a crash
undid would bring back a base that no longer is one. A body whose CRC fails
when it is read (a crash tore it, its header survived) reads as not kept.

**Compaction** (`compact`, by the review after it drops content): once the
file is more than twice its live records and COMPACT_SLACK more, the live
records are written to `PACK.new`, fsync'd, a MOVED record is appended to
the old file and the new one renamed over it, all under the old file's
lock. A holder of the old file (the mount) reads MOVED at its next lock and
follows the path; if the path still names the old file, the compaction
died before its rename and the record is void.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

PACK_NAME = b"base-content.pack"
MAGIC = b"ABP1"
KEEP, PUT, DROP, MOVED = 1, 2, 3, 4
#: A review compacts a pack whose file is this much more than its live
#: records and more than twice them (`compact`).
COMPACT_SLACK = 16 << 20
# magic, kind, (pad), path length, body length, mtime_ns, body CRC, head CRC
_HEAD = struct.Struct("<4sB3xIQqII")
_HEAD_START, _CRC = struct.Struct("<4sB3xIQqI"), struct.Struct("<I")  # (_HEAD in two)
_MAX_PATH = 1 << 16
_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Kept:
    """Where a live body is in the pack, and what it claims."""

    offset: int  # of the body
    size: int
    mtime_ns: int
    crc: int


def record(kind: int, path: bytes, body: bytes = b"", mtime_ns: int = 0) -> bytes:
    """One record's bytes."""
    return b"".join(_record(kind, path, body, mtime_ns)[0])


def _record(kind: int, path: bytes, body: bytes, mtime_ns: int) -> tuple[list[bytes], int]:
    """A record as the pieces one writev(2) writes, and its body's CRC."""
    body_crc = zlib.crc32(body)
    head = _HEAD_START.pack(MAGIC, kind, len(path), len(body), mtime_ns, body_crc)
    return [head, _CRC.pack(zlib.crc32(path, zlib.crc32(head))), path, body], body_crc


def _ancestors(path: bytes) -> Iterator[bytes]:
    """`path` and each directory above it (a DROP of any of them drops it)."""
    yield path
    i = path.rfind(b"/")
    while i > 0:
        yield path[:i]
        i = path.rfind(b"/", 0, i)


class Pack:
    """One open pack and the live paths read from it so far."""

    def __init__(self, path: bytes, fd: int, sync: bool) -> None:
        self.path = path
        self.fd = fd
        self.sync = sync  # fsync each append (the review's)
        self._moved = False  # a MOVED record was read
        self.end = 0  # how far this pack has been read: a record boundary
        self.live: dict[bytes, Kept] = {}

    @classmethod
    def open(cls, path: bytes | str | os.PathLike[str], sync: bool = False,
             create: bool = True) -> Pack | None:
        """The pack at `path` (made empty if `create`; else None if absent)."""
        try:
            fd = os.open(path, _FLAGS | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            if create:
                raise
            return None
        return cls(os.fsencode(path), fd, sync)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Pack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the pack's lock, caught up with every record others appended."""
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            self._catch_up()
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    # ---- reading ----------------------------------------------------------

    def _catch_up(self) -> None:
        size = os.fstat(self.fd).st_size
        if size == self.end:
            return
        if size < self.end:  # (not done by any writer: start over)
            self.end = 0
            self.live.clear()
        with open(f"/proc/self/fd/{self.fd}", "rb", buffering=1 << 16) as f:
            f.seek(self.end)
            good = self._apply(f, size)
        if good < size:
            os.ftruncate(self.fd, good)  # a torn tail (we hold the lock)
        self.end = good
        if self._moved:
            self._moved = False
            self._follow()

    def _follow(self) -> None:
        """After a MOVED record: take the lock of the file now at our path
        and read it from the start. (If the path still names this file, the
        compaction died before its rename: the record is void.)"""
        try:
            fd = os.open(self.path, _FLAGS)
        except FileNotFoundError:
            return  # (the session went: stay on the old file)
        if os.fstat(fd).st_ino == os.fstat(self.fd).st_ino:
            os.close(fd)
            return
        self._switch_to(fd)

    def _switch_to(self, fd: int) -> None:
        """Hold `fd`'s file (locked, read from the start) instead of ours."""
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd, self.end = fd, 0
        self.live.clear()
        self._catch_up()

    def _apply(self, f: BinaryIO, size: int) -> int:
        """Apply the records from `f`'s position; return where the last whole
        one ends. A run of DROPs (one review's batch) is applied at once."""
        pos = f.tell()
        drops: set[bytes] = set()
        while pos + _HEAD.size <= size:
            head = f.read(_HEAD.size)
            magic, kind, plen, blen, mtime_ns, body_crc, head_crc = _HEAD.unpack(head)
            body_at = pos + _HEAD.size + plen
            if magic != MAGIC or kind not in (KEEP, PUT, DROP, MOVED) or plen > _MAX_PATH \
                    or body_at + blen > size:
                break
            path = f.read(plen)
            if zlib.crc32(path, zlib.crc32(head[:-_CRC.size])) != head_crc:
                break
            f.seek(blen, io.SEEK_CUR)
            if kind == DROP:
                drops.add(path)
            else:
                if drops:
                    self._drop(drops)
                    drops = set()
                self._take(kind, path, Kept(body_at, blen, mtime_ns, body_crc))
            pos = body_at + blen
        if drops:
            self._drop(drops)
        return pos

    def _take(self, kind: int, path: bytes, kept: Kept) -> None:
        if kind == KEEP:
            self.live.setdefault(path, kept)
        elif kind == PUT:
            self.live[path] = kept
        elif kind == MOVED:
            self._moved = True
        else:
            self._drop({path})

    def _drop(self, prefixes: set[bytes]) -> None:
        """Forget every live path at or below one of `prefixes` (b"": all):
        one pass over the live paths however many prefixes (a commit of
        10,000 files drops 10,000)."""
        if b"" in prefixes:
            self.live.clear()
            return
        for p in [p for p in self.live if not prefixes.isdisjoint(_ancestors(p))]:
            del self.live[p]

    def read(self, path: bytes) -> tuple[Kept, bytes] | None:
        """The live content of `path` with what it claims, or None (none
        kept, or its body did not survive a crash)."""
        with self.locked():
            kept = self.live.get(path)
        if kept is None:
            return None
        body = os.pread(self.fd, kept.size, kept.offset)
        if len(body) != kept.size or zlib.crc32(body) != kept.crc:
            return None
        return kept, body

    def paths(self) -> list[bytes]:
        with self.locked():
            return list(self.live)

    # ---- writing ----------------------------------------------------------

    def has(self, path: bytes) -> bool:
        with self.locked():
            return path in self.live

    def claim(self, path: bytes) -> Kept | None:
        """What the live content of `path` claims (size, mtime), without
        reading it; None if none is kept."""
        with self.locked():
            return self.live.get(path)

    def keep(self, path: bytes, body: bytes, mtime_ns: int) -> bool:
        """Append `body` as `path`'s content unless it has some (the first
        copy stands); False if it had. (Once per copy-up: the lock is taken
        by hand, not through `locked`.)"""
        pieces, crc = _record(KEEP, path, body, mtime_ns)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            self._catch_up()
            if path in self.live:
                return False
            self._append(pieces)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.live[path] = Kept(self.end - len(body), len(body), mtime_ns, crc)
        return True

    def put(self, path: bytes, body: bytes, mtime_ns: int = 0) -> None:
        """Make `body` the content of `path`."""
        pieces, crc = _record(PUT, path, body, mtime_ns)
        with self.locked():
            self._append(pieces)
            self.live[path] = Kept(self.end - len(body), len(body), mtime_ns, crc)

    def drop(self, paths: Iterable[bytes]) -> None:
        """Keep nothing at or below each of `paths` (b"": nothing at all);
        one append for all of them, none for paths with nothing kept."""
        with self.locked():
            covered = {a for p in self.live for a in _ancestors(p)}
            wanted = [p for p in paths if not p or p in covered]
            if not wanted:
                return
            # joined: a commit's thousands of records are past writev's IOV_MAX
            self._append([b"".join(record(DROP, p) for p in wanted)])
            self._drop(set(wanted))

    def compact(self, slack: int = COMPACT_SLACK) -> bool:
        """Rewrite the pack as its live content only, when the file is more
        than twice that and `slack` more (dropped content piles up
        over a long session's commits). Under the lock: the whole new file
        is written and fsync'd beside the pack, a MOVED record is appended
        to the old one, the new one is renamed over it; holders of the old
        file (the mount) read MOVED when they next take the lock and follow
        the path. A body that fails its CRC is left out (it reads as not
        kept either way). Returns whether it compacted."""
        with self.locked():
            live_bytes = sum(_HEAD.size + len(p) + k.size for p, k in self.live.items())
            if self.end <= 2 * live_bytes + slack:
                return False
            new_path = self.path + b".new"
            fd = os.open(new_path, _FLAGS | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for path, kept in self.live.items():
                    body = os.pread(self.fd, kept.size, kept.offset)
                    if len(body) == kept.size and zlib.crc32(body) == kept.crc:
                        os.writev(fd, _record(KEEP, path, body, kept.mtime_ns)[0])
                os.fsync(fd)
                self._append(_record(MOVED, b"", b"", 0)[0])
                os.rename(new_path, self.path)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(new_path)
                raise
            dfd = os.open(os.path.dirname(self.path) or b".", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            self._switch_to(fd)
        return True

    def _append(self, pieces: list[bytes]) -> None:
        """One write at the end (O_APPEND); a short or failed one is cut
        off again, so the file still ends at a record boundary."""
        want = sum(map(len, pieces))
        try:
            n = os.writev(self.fd, pieces)
            if n != want:
                raise OSError(f"short write to the base-content pack ({n} of {want})")
            if self.sync:
                os.fsync(self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.end)
            raise
        self.end += want
