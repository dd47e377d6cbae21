"""The kernel caches what the session alone changes: a warm listing or
re-read does not reach the daemon (counted by the daemon's own request
counters), and changes made through the mount are never served stale."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from tests.support.mounts import MountedSession

Mount = Callable[..., MountedSession]


def stats(s: MountedSession) -> dict[str, int]:
    reply = s.control("stats")
    assert reply["cache_dirs"], "the FUSE reply shim is not loaded (scripts/setup.sh builds it)"
    counts: dict[str, int] = reply["requests"]
    return counts


def test_warm_listing_is_served_by_the_kernel(tmp_path: Path, mount_session: Mount) -> None:
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(50):
        (lower / "d" / f"f{i}").write_text(str(i))
    s = mount_session(lower)
    first = sorted(p.name for p in (s.mnt / "d").iterdir())
    before = stats(s).get("readdir", 0)
    for _ in range(5):
        assert sorted(p.name for p in (s.mnt / "d").iterdir()) == first
    assert stats(s).get("readdir", 0) == before


def test_listing_cache_follows_changes_through_the_mount(mount_session: Mount) -> None:
    s = mount_session()
    (s.mnt / "d").mkdir()
    (s.mnt / "d" / "a").write_text("a")
    assert sorted(p.name for p in (s.mnt / "d").iterdir()) == ["a"]
    (s.mnt / "d" / "b").write_text("b")
    assert sorted(p.name for p in (s.mnt / "d").iterdir()) == ["a", "b"]
    (s.mnt / "d" / "a").unlink()
    assert sorted(p.name for p in (s.mnt / "d").iterdir()) == ["b"]
    (s.mnt / "d" / "b").rename(s.mnt / "c")
    assert list((s.mnt / "d").iterdir()) == []


def test_rewrites_are_not_served_from_a_stale_page_cache(mount_session: Mount) -> None:
    s = mount_session()
    f = s.mnt / "f"
    for i in range(20):
        f.write_text(f"version {i}")
        assert f.read_text() == f"version {i}"


def test_lower_changes_show_once_their_ttl_expires(tmp_path: Path, mount_session: Mount) -> None:
    # With --lower-ttl 0 the kernel revalidates lower-backed attributes on
    # every use, so a cached listing is dropped as soon as the project
    # directory's mtime moves: edits to the project show in the session.
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "a").write_text("a")
    s = mount_session(lower, None, "--lower-ttl", "0")
    assert sorted(p.name for p in (s.mnt / "d").iterdir()) == ["a"]
    (lower / "d" / "b").write_text("b")
    assert sorted(p.name for p in (s.mnt / "d").iterdir()) == ["a", "b"]
    assert (s.mnt / "d" / "b").read_text() == "b"


def test_security_xattr_probes_never_reach_python(tmp_path: Path, mount_session: Mount) -> None:
    # `ls -l` asks for security.selinux on every entry and every write(2)
    # asks for security.capability: the shim answers those in C.
    lower = tmp_path / "lower"
    lower.mkdir()
    for i in range(20):
        (lower / f"f{i}").write_text("x")
    s = mount_session(lower)
    subprocess.run(["ls", "-l", str(s.mnt)], check=True, capture_output=True)
    with open(s.mnt / "w", "wb") as f:
        for _ in range(20):
            f.write(b"y" * 4096)
            f.flush()
    assert stats(s).get("getxattr", 0) == 0
    os.setxattr(s.mnt / "f1", "user.k", b"v")
    assert os.getxattr(s.mnt / "f1", "user.k") == b"v"
    assert stats(s).get("getxattr", 0) == 1
    with pytest.raises(OSError):
        os.getxattr(s.mnt / "f1", "security.capability")


def test_project_edits_show_in_directories_the_session_changed_too(
        tmp_path: Path, mount_session: Mount) -> None:
    # A merged directory's cached listing is checked against the upper
    # directory's mtime; the daemon notices the project side moving (at the
    # lower TTL, 0 here) and drops the kernel's cache of that directory.
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "a").write_text("a")
    s = mount_session(lower, None, "--lower-ttl", "0")
    (s.mnt / "d" / "mine").write_text("mine")
    assert sorted(p.name for p in (s.mnt / "d").iterdir()) == ["a", "mine"]
    (lower / "d" / "b").write_text("b")
    # The invalidation lands just after the reply that noticed the change:
    # look again until it has (bounded; no sleeping).
    for _ in range(2000):
        names = sorted(p.name for p in (s.mnt / "d").iterdir())
        if names == ["a", "b", "mine"]:
            break
        os.stat(s.mnt / "d")
        os.sched_yield()
    assert names == ["a", "b", "mine"]
    assert (s.mnt / "d" / "b").read_text() == "b"


# ---- files created write-only: FOPEN_DIRECT_IO (fuse/cache.py) ---------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def cached_pages(path: Path, length: int) -> int:
    """How many of the first `length` bytes' pages the kernel holds in its
    page cache for `path` (mincore of a mapping). Mapped with libc's mmap:
    Python's mmap.mmap calls fstat, which would refresh the file's attributes
    and so drop the pages (the mtime moved) before they are counted."""
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr is not None and addr != ctypes.c_void_p(-1).value, \
            os.strerror(ctypes.get_errno())
        try:
            vec = ctypes.create_string_buffer(-(-length // mmap.PAGESIZE))
            assert _libc.mincore(addr, length, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec.raw)
        finally:
            _libc.munmap(addr, length)
    finally:
        os.close(fd)


def test_a_file_created_write_only_skips_the_page_cache(mount_session: Mount) -> None:
    # A cached write(2) fills the mount's pages and sends them as a WRITE;
    # nothing could read them before the next stat drops them (the mtime
    # moved), so a write-only creator's data goes to the daemon directly.
    s = mount_session()
    data = os.urandom(1 << 20)
    counts = {}
    for name, mode in (("w", os.O_WRONLY), ("rw", os.O_RDWR)):
        fd = os.open(s.mnt / name, mode | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)
        counts[name] = cached_pages(s.mnt / name, len(data))
    if s.control("stats")["data_path"]["data_path"] == "daemon":
        # (with passthrough a mapping is the upper file's: nothing to see)
        assert counts["w"] == 0
        # a file its writer may read stays cached
        assert counts["rw"] == len(data) // mmap.PAGESIZE
    for name in ("w", "rw"):
        assert (s.mnt / name).read_bytes() == data
        assert (s.upper / name).read_bytes() == data


def test_readers_see_what_a_write_only_creator_writes(mount_session: Mount) -> None:
    # `cmd > log` in one process, `tail -f log` or an editor in another: the
    # reader's cached pages give way to the writer's direct writes.
    s = mount_session()
    log = s.mnt / "log"
    w = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(w, b"aaaa")
        r = os.open(log, os.O_RDONLY)
        try:
            assert os.pread(r, 100, 0) == b"aaaa"
            view = mmap.mmap(r, 4, prot=mmap.PROT_READ)
            os.pwrite(w, b"bbbbcc", 0)
            assert os.pread(r, 100, 0) == b"bbbbcc"
            assert view[:4] == b"bbbb"
            view.close()
            os.write(w, b"dd")  # at the writer's own offset (4)
            assert os.pread(r, 100, 0) == b"bbbbdd"
            assert os.fstat(r).st_size == 6
        finally:
            os.close(r)
    finally:
        os.close(w)
    with open(log, "ab") as f:  # and the next open (no_open: cached) appends
        f.write(b"ee")
    assert log.read_bytes() == b"bbbbddee"
    assert (s.upper / "log").read_bytes() == b"bbbbddee"


def _getdents(fd: int, size: int) -> list[str]:
    """One getdents64(2) call with a `size`-byte buffer: the names it gave."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(size)
    n = libc.syscall(217, fd, buf, size)  # SYS_getdents64 (x86_64)
    if n < 0:
        raise OSError(ctypes.get_errno(), "getdents64")
    names, off = [], 0
    while off < n:
        reclen = int.from_bytes(buf.raw[off + 16:off + 18], "little")
        names.append(buf.raw[off + 19:off + reclen].split(b"\0", 1)[0].decode())
        off += reclen
    return names


def _directory_of(tmp_path: Path, mount_session: Mount, names: Iterable[str]) -> Path:
    """Directory `d` of a mounted lower, holding files `names`."""
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for name in names:
        (lower / "d" / name).write_text("x")
    return mount_session(lower).mnt / "d"


def _read_to_end(fd: int, size: int) -> list[str]:
    names: list[str] = []
    while chunk := _getdents(fd, size):
        names += chunk
    return names


def test_a_listing_begun_before_a_change_does_not_serve_stale_names_after_it(
        tmp_path: Path, mount_session: Mount) -> None:
    """The kernel caches a directory's listing as any reader reads it, and
    checks the directory changed only when a reader starts at offset 0. A
    walker that began before a change finished that cache with the rest of
    the listing; a reader who started after the change, with a first chunk
    fresh from the daemon, was then served the rest from that cache: its own
    offsets into a listing shifted by the change (an `ls` right after an
    `rm` showed a name twice and lost another while an IDE or `git status`
    walked the directory). The daemon now drops the kernel's cached listing
    of a directory before it answers a change to it."""
    d = _directory_of(tmp_path, mount_session, (f"f{i:03d}" for i in range(300)))
    os.listdir(d)  # the kernel now holds the whole listing: drop it
    (d / "new").write_text("x")
    walker = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    reader = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _getdents(walker, 1 << 16)  # the cache begins: the first page
        os.unlink(d / "f000")  # every later name moves down one place
        first = _getdents(reader, 120)  # a few names, from the daemon
        assert first and len(first) < 10
        _read_to_end(walker, 1 << 16)  # finishes the cache
        names = first + _read_to_end(reader, 1 << 16)
    finally:
        os.close(walker)
        os.close(reader)
    want = sorted([".", "..", "new", *(f"f{i:03d}" for i in range(1, 300))])
    assert sorted(names) == want, (
        f"twice: {sorted({n for n in names if names.count(n) > 1})}, "
        f"missing: {sorted(set(want) - set(names))}, stale: {sorted(set(names) - set(want))}")
    assert sorted(os.listdir(d)) == want[2:]


def test_removing_each_name_as_it_is_listed_removes_them_all(
        tmp_path: Path, mount_session: Mount) -> None:
    """`for e in scandir(d): unlink(e)` (readdir and unlink in one loop, as
    C programs clean a directory): each READDIR after the first continues
    the listing the reader began with, so no name is skipped though the
    names before it are gone."""
    d = _directory_of(tmp_path, mount_session, (f"f{i:03d}" for i in range(300)))
    (d / "new").write_text("x")  # d merged: its listings are the daemon's
    removed = 0
    with os.scandir(d) as it:
        for entry in it:
            os.unlink(entry.path)
            removed += 1
    assert removed == 301
    assert os.listdir(d) == []


def test_removing_each_listed_name_while_another_reader_lists_removes_them_all(
        tmp_path: Path, mount_session: Mount) -> None:
    """The loop above while something else lists the directory between its
    chunks (an IDE's watcher, `git status`): that listing starts at offset
    0, which used to replace the one the loop was part way through, and the
    loop then went on by index in a listing without the names it had
    removed: it skipped as many. Listings now keep their places. The
    numbers make the kernel's refilled cache exactly two pages (256 entries
    of 32 bytes), where the kernel answers end of directory for a position
    it does not find: the loop's position must be one the cache holds."""
    d = _directory_of(tmp_path, mount_session, (f"c{i:04d}" for i in range(262)))
    (d / "c0000").write_text("y")  # d merged: its listings are the daemon's
    assert len(os.listdir(d)) == 262  # the kernel caches it whole
    loop = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = _getdents(loop, 320)  # ".", ".." and 8 names
        assert first[:2] == [".", ".."] and len(first) == 10
        for name in first[2:]:
            os.unlink(d / name)
        assert len(os.listdir(d)) == 254  # another reader: a listing from offset 0
        rest = _read_to_end(loop, 1 << 16)
    finally:
        os.close(loop)
    assert sorted(rest) == [f"c{i:04d}" for i in range(8, 262)]


def test_a_reader_part_way_through_a_listing_sees_each_lasting_name_once(
        tmp_path: Path, mount_session: Mount) -> None:
    """Names added and removed before and after a reader's position while
    others list the directory: the reader gets every name that was there
    throughout exactly once."""
    d = _directory_of(tmp_path, mount_session, (f"f{i:03d}" for i in range(300)))
    (d / "f299").unlink()  # d merged
    reader = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = _getdents(reader, 400)
        (d / "a-new").write_text("x")  # sorts first
        (d / "f000").unlink()  # read already
        (d / "f290").unlink()  # not read yet
        (d / "f150").rename(d / "g150")
        os.listdir(d)
        (d / "f001").unlink()
        os.listdir(d)
        names += _read_to_end(reader, 1 << 16)
    finally:
        os.close(reader)
    lasting = {f"f{i:03d}" for i in range(300)} - {"f000", "f001", "f150", "f290", "f299"}
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    assert lasting <= set(names), sorted(lasting - set(names))
    assert set(names) <= lasting | {".", "..", "f000", "f001", "f150", "f290", "a-new", "g150"}


def test_a_reader_the_shim_began_goes_on_where_it_was_after_a_change(
        tmp_path: Path, mount_session: Mount) -> None:
    """A lower-only directory is listed by the FUSE shim in C (its lower
    names sorted, offsets index + 1). Its first change gives it an upper
    directory, and the reader part way through goes on in the daemon's
    listing, which used to place the merged names sorted anew: a name added
    or removed before the reader's position shifted the rest, and the reader
    got a name twice or missed one. The daemon's fresh listing keeps the
    lower names where the shim put them (a removed one's place left empty)
    and places the session's own names after them."""
    lower = tmp_path / "lower"
    for sub in ("probe", "d"):
        (lower / sub).mkdir(parents=True)
    for i in range(300):
        (lower / "d" / f"f{i:03d}").write_text("x")
    for i in range(4):
        (lower / "probe" / f"p{i}").write_text("p")
    s = mount_session(lower)
    d = s.mnt / "d"
    for entry in os.scandir(s.mnt / "probe"):  # a stat walk: full listings (name_only.py)
        entry.stat(follow_symlinks=False)
    in_c = s.control("stats")["shim_lookups"]["listings"]
    reader = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = _getdents(reader, 400)
        assert s.control("stats")["shim_lookups"]["listings"] > in_c, "not listed in C"
        assert names[:3] == [".", "..", "f000"] and 5 < len(names) < 20, names
        (d / "a-new").write_text("x")  # sorts first; d gets an upper directory
        (d / "f000").unlink()  # read already
        (d / "f001").unlink()  # read already
        (d / "f290").unlink()  # not read yet
        (d / "f150").rename(d / "g150")
        names += _read_to_end(reader, 1 << 16)
    finally:
        os.close(reader)
    lasting = {f"f{i:03d}" for i in range(300)} - {"f000", "f001", "f150", "f290"}
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    assert lasting <= set(names), sorted(lasting - set(names))
    assert set(names) <= lasting | {".", "..", "f000", "f001", "f150", "f290", "a-new", "g150"}
    assert sorted(os.listdir(d)) == sorted(lasting | {"a-new", "g150"})


def test_kept_listings_are_bounded_by_names_too() -> None:
    """The daemon keeps the places of the directories listed last, at most
    LISTED_NAMES names in all (each costs a few hundred bytes): three
    listings of 90,000 names keep the last two, and the one listed last
    stays whatever its size."""
    from astrid_fs.fuse.cache import LISTED_NAMES, KernelCache

    cache = KernelCache(lower_ttl=1.0)
    big = [b".", b".."] + [b"n%06d" % i for i in range(90_000)]
    for ino in (10, 11, 12):
        cache.put_listing(ino, big, {})
    assert cache.listing(10) is None
    assert cache.listing(11) is not None and cache.listing(12) is not None
    huge = [b".", b".."] + [b"n%07d" % i for i in range(LISTED_NAMES + 1)]
    kept = cache.put_listing(13, huge, {})
    assert cache.listing(13) is kept
    assert cache.listing(11) is None and cache.listing(12) is None


def test_cp_a_of_a_project_directory_asks_python_little(tmp_path: Path,
                                                         mount_session: Mount) -> None:
    """`cp -a` of a directory inside a session sent each file's miss (a
    LOOKUP before the CREATE), two LISTXATTRs of the source, a SETXATTR of
    an ACL (refused) and two SETATTRs (times, mode) to Python. The shim
    answers the misses (part 19), the lists of entries that have no xattrs
    (part 12), refuses ACLs itself (part 4) and sets the new files' times and
    modes (part 20); the copy is the same, a file with an xattr included."""
    lower = tmp_path / "lower"
    for d in range(4):
        (lower / "src" / f"d{d}").mkdir(parents=True)
        for i in range(50):
            f = lower / "src" / f"d{d}" / f"f{i}"
            f.write_text(f"{d} {i}")
            os.chmod(f, 0o640 if i % 2 else 0o755)
    os.setxattr(lower / "src" / "d0" / "f0", "user.tag", b"kept")
    s = mount_session(lower)
    subprocess.run(["find", str(s.mnt), "-printf", ""], check=True)  # as an agent's walk
    before = stats(s)
    subprocess.run(["cp", "-a", str(s.mnt / "src"), str(s.mnt / "copy")], check=True)
    after = stats(s)
    asked = {k: after.get(k, 0) - before.get(k, 0)
             for k in ("lookup", "listxattr", "setxattr", "getxattr", "setattr")}
    assert asked["lookup"] <= 12, asked  # 200 files, 5 directories
    assert asked["listxattr"] <= 12, asked
    assert asked["setxattr"] <= 3, asked  # user.tag copied (ACLs: none)
    if s.control("stats")["data_path"]["data_path"] == "daemon":
        # (files' modes and times: part 20; with passthrough the daemon's)
        assert asked["setattr"] <= 3 * 5, asked  # each directory's owner, mode, times
    for d in range(4):
        for i in range(50):
            src, dst = lower / "src" / f"d{d}" / f"f{i}", s.mnt / "copy" / f"d{d}" / f"f{i}"
            a, b = os.stat(src), os.stat(dst)
            assert (b.st_mode, b.st_mtime_ns, dst.read_text()) == \
                (a.st_mode, a.st_mtime_ns, src.read_text())
    assert os.getxattr(s.mnt / "copy" / "d0" / "f0", "user.tag") == b"kept"
    assert os.listxattr(s.mnt / "copy" / "d0" / "f1") == []
    with pytest.raises(OSError) as raised:
        os.removexattr(s.mnt / "copy" / "d0" / "f1", "system.posix_acl_access")
    assert raised.value.errno == errno.EOPNOTSUPP
