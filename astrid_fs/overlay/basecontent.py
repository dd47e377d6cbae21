"""Base content: what a project file held when the session first hid it.

A three-way merge of a conflict (review/resolve.py) needs the project's
version the session started from, but the lower layer only keeps the
newest one. So when the overlay first replaces a regular lower file of at
most `LIMIT` bytes (a copy-up, an `rm`, an editor's rename over it), it
keeps that file's content in the session's base-content pack
(`SESSION/base-content.pack`, basepack.py) under the lower path (as the
review names it). The first copy stands: a later hide of the same path (the
session deleted, then re-created it) keeps it. The review drops the content
of paths that land or are discarded (review/basecontent.py).

Knows: which sessions keep base content and how a copy-up hands it over.
Does not know: when a path is hidden (copyup.py, namespace.py call `keep`)
nor how merges use the copy. Only session mounts keep base content: the work
dir is `SESSION/work/astrid` of a session that records a base
(`bases.sqlite`); a plain lower/upper/work mount keeps none. Keeping is
best-effort: content that cannot be written (disk full) is not kept, and
the merge then takes an empty base (every difference becomes a conflict
region; nothing is lost).

**One append per copy-up.** Until 2026-12-03 each base was a file of its
own (`SESSION/base-content/PATH`, an unnamed file linked into place, written
by a C thread while making files was slow): a copy-up then made two files
where kernel overlayfs makes one, and on this project's machines a file
create costs ext4 hundreds of µs (docs/benchmarks.md). Now a copy-up, which
has the content in hand (it read the file to copy it), appends it to the
pack the mount keeps open: no inode, no link, no thread. Records are not
fsync'd, as copy-ups are not (unsynced.py): a crash can lose the last ones,
which then read as not kept. A session made before keeps its files: the
first pack opened for it takes them in (`open_pack`) and removes the dir.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
from collections.abc import Callable

from astrid_fs.overlay.basepack import PACK_NAME, Pack

LIMIT = 8 << 20  # larger files are not merged, so their base is not kept
DIR_NAME = b"base-content"  # the per-file store of sessions made before the pack
_INDEX_NAME = b"bases.sqlite"  # (review/bases.py)


def store_for(tmp_dir: bytes) -> bytes | None:
    """`SESSION` when `tmp_dir` is a session's copy-up dir
    (`SESSION/work/astrid`) and the session records a base; else None."""
    root = _session_root(tmp_dir)
    if root is None or not os.path.exists(root + b"/" + _INDEX_NAME):
        return None
    return root


@functools.lru_cache(maxsize=16)
def _session_root(tmp_dir: bytes) -> bytes | None:
    """`SESSION` if `tmp_dir` is named as a session's copy-up dir (path
    arithmetic only: asked on every copy-up, by a daemon that has one work
    dir)."""
    work = os.path.dirname(tmp_dir)
    if os.path.basename(work) != b"work":
        return None
    return os.path.dirname(work)


def open_pack(session_root: bytes, sync: bool, create: bool = True) -> Pack | None:
    """The session's pack (None: none yet and not `create`d), with the files
    of the per-file store taken in first where a session still has them."""
    pack = Pack.open(session_root + b"/" + PACK_NAME, sync=sync,
                     create=create or os.path.isdir(session_root + b"/" + DIR_NAME))
    if pack is not None:
        _take_in_files(pack, session_root + b"/" + DIR_NAME)
    return pack


def _take_in_files(pack: Pack, old: bytes) -> None:
    """Move the per-file store's copies into `pack` (as kept first: a path
    the pack has stands), then remove the dir. Repeating it after a crash
    in between takes nothing twice."""
    if not os.path.isdir(old):
        return
    for here, _dirs, files in os.walk(old):
        for name in files:
            full = os.path.join(here, name)
            try:
                st = os.lstat(full)
                if not stat.S_ISREG(st.st_mode) or st.st_size > LIMIT:
                    continue
                with open(full, "rb") as f:
                    body = f.read()
            except OSError:
                continue
            pack.keep(os.path.relpath(full, old), body, st.st_mtime_ns)
    os.fsync(pack.fd)
    shutil.rmtree(old, ignore_errors=True)


_packs: dict[bytes, Pack] = {}  # the mount's, by work dir


def _pack_for(tmp_dir: bytes) -> Pack | None:
    pack = _packs.get(tmp_dir)
    if pack is None:
        root = store_for(tmp_dir)
        if root is None:
            return None
        pack = open_pack(root, sync=False)
        if pack is not None:
            _packs[tmp_dir] = pack
    return pack


def close_packs() -> None:
    """Close the packs this process keeps open (at unmount)."""
    for pack in _packs.values():
        pack.close()
    _packs.clear()


def wanted(st: os.stat_result | None) -> bool:
    """Is a lower entry with this stat one whose content is kept?"""
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_size <= LIMIT


def keep(tmp_dir: bytes, lower_rel: bytes, read: Callable[[], bytes],
         mtime_ns: int) -> None:
    """Keep the base content of lower path `lower_rel` (what `read()`
    returns; the lower file's `mtime_ns` tells which version it is) unless
    some is kept already (asked before `read`, which may fetch a big file)."""
    try:
        pack = _pack_for(tmp_dir)
        if pack is None or not lower_rel or pack.has(lower_rel):
            return
        pack.keep(lower_rel, read(), mtime_ns)
    except OSError:
        pass  # best-effort (see the module docstring): no copy is a safe outcome


def keep_bytes(tmp_dir: bytes, lower_rel: bytes, content: bytes, mtime_ns: int) -> None:
    """`keep` with the content in hand (a copy-up read it)."""
    try:
        pack = _pack_for(tmp_dir)
        if pack is not None and lower_rel:
            pack.keep(lower_rel, content, mtime_ns)
    except OSError:
        pass  # best-effort, as `keep`


def copy_from(path: bytes) -> Callable[[], bytes]:
    """A `read` for the regular file at `path` (up to LIMIT bytes). Asks
    for the size fstat gives (and a byte more, to see the end), then reads
    on to the end: `read(LIMIT + 1)` on a buffered file allocated 8 MiB for
    each one, 63 us against 11 for a small file (every `rm` of a project
    file keeps its content)."""
    def read() -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ask = min(os.fstat(fd).st_size + 1, LIMIT)
            parts: list[bytes] = []
            total = 0
            while total < LIMIT:
                chunk = os.read(fd, ask)
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
                ask = min(1 << 20, LIMIT - total)
            return b"".join(parts)[:LIMIT]
        finally:
            os.close(fd)
    return read


def via_fd(tmp_dir: bytes, fill: Callable[[int], None]) -> Callable[[], bytes]:
    """A `read` for content that `fill(fd)` writes into a file (a remote
    tree's `fetch_to`, which copies with copy_file_range: so a scratch file
    on the work dir's file system, not memory), read back."""
    def read() -> bytes:
        fd = _scratch(tmp_dir)
        try:
            fill(fd)
            return os.pread(fd, LIMIT, 0)
        finally:
            os.close(fd)
    return read


def _scratch(tmp_dir: bytes) -> int:
    """An unnamed read-write file of `tmp_dir` (a named one, unlinked at once,
    where the file system has no unnamed files)."""
    try:
        return os.open(tmp_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        path = b"%s/base-%d" % (tmp_dir, os.getpid())
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.unlink(path)
        return fd


def keep_local(tmp_dir: bytes, lower_rel: bytes, lower_path: bytes) -> None:
    """Keep the base content of a local lower file about to be hidden."""
    try:
        st = os.lstat(lower_path)
    except OSError:
        return
    if wanted(st):
        keep(tmp_dir, lower_rel, copy_from(lower_path), st.st_mtime_ns)
