"""WRITEs answered in C (fuse/write_table.py, shim parts 9 and 10).

The shim writes a by-inode WRITE straight to the fd the daemon registered
for that inode (and reads READs from it: test_read_table.py). Its one danger
is a stale entry: an fd number the daemon closed (and the kernel may hand out
again for another file) still in the table, or an fd on a lower file after a
copy-up. So the table must name exactly the inode fds the daemon holds,
writable exactly where WRITEs may go (on upper files, or pinned ones), and
an entry must leave it before its fd closes. Checked twice: on the operations
without a mount (a recording table, after every step), and through a real
mount (writes after the daemon closed and reused fds land in the right files;
size and mtime seen through the mount are the upper file's).
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import stat
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from astrid_fs.fuse.shim import FH_INODE
from astrid_fs.overlay.files import DEFAULT_CAPACITY, MIN_CAPACITY, OpenFiles, fd_capacity
from astrid_fs.overlay.overlay import SetAttr
from tests.fs.test_ops_api import CTX, make_ops
from tests.support.mounts import MountedSession, missing_part

#: fuse_shim.c DRAIN_SPIN_MISSES
DRAIN_SPIN_MISSES = 8


class RecordingTable:
    """An fd table that checks the fd it is told about is open."""

    serves_reads = True

    def __init__(self) -> None:
        self.fds: dict[int, tuple[int, bool]] = {}

    def add(self, ino: int, fd: int, *, writes: bool) -> None:
        os.fstat(fd)  # open now
        self.fds[ino] = (fd, writes)

    def remove(self, ino: int) -> None:
        entry = self.fds.pop(ino, None)
        if entry is not None:
            os.fstat(entry[0])  # still open: removed before the close


def expected(files: OpenFiles) -> dict[int, tuple[int, bool]]:
    return {ino: (e.fd, e.writable and (e.in_upper or e.pinned))
            for ino, e in files._by_ino.items()}


def writable(table: RecordingTable) -> set[int]:
    return {ino for ino, (_, writes) in table.fds.items() if writes}


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for d in (lower, upper, work):
        d.mkdir()
    (lower / "README.md").write_text("hello\n")
    for i in range(4):
        (lower / f"l{i}").write_text(f"lower {i}\n")
    return lower, upper, work


async def test_table_names_exactly_the_inode_fds_and_which_take_writes(
        layers: tuple[Path, Path, Path]) -> None:
    ops = make_ops(layers, no_open=True)
    table = RecordingTable()
    ops.files.write_table = table
    ops.files.capacity = 3

    def check() -> None:
        assert table.fds == expected(ops.files)

    readme = await ops.lookup(1, b"README.md", CTX)
    assert await ops.read(FH_INODE | readme.st_ino, 0, 5) == b"hello"
    check()
    assert table.fds[readme.st_ino][1] is False  # read-only, on the lower file
    await ops.write(FH_INODE | readme.st_ino, 6, b"more")  # copy-up, reopen
    check()
    assert table.fds[readme.st_ino][1] is True
    # A lower file copied up by a chmod, not by a write through its fd: its
    # read-only lower fd leaves the table (its readers must read the copy).
    l0 = await ops.lookup(1, b"l0", CTX)
    assert await ops.read(FH_INODE | l0.st_ino, 0, 5) == b"lower"
    assert l0.st_ino in table.fds
    ops.ov.setattr(l0.st_ino, SetAttr(mode=0o600), None)
    check()
    assert l0.st_ino not in table.fds
    for i in range(1, 4):  # read-only fds count against the capacity too
        entry = await ops.lookup(1, b"l%d" % i, CTX)
        assert await ops.read(FH_INODE | entry.st_ino, 0, 7) == b"lower %d" % i
        check()
    assert len(table.fds) == 3 and not writable(table)
    created = []
    for i in range(6):  # beyond the capacity: evictions
        _, entry = await ops.create(1, b"n%d" % i, 0o644, os.O_RDWR, CTX)
        await ops.write(FH_INODE | entry.st_ino, 0, b"n")
        created.append(entry.st_ino)
        check()
    await ops.unlink(1, b"n5", CTX)  # pinned: still the file's only way in
    check()
    assert created[-1] in writable(table)
    ops.invalidate_all()  # unpinned fds close, the pinned one stays
    check()
    assert list(table.fds) == [created[-1]]
    await ops.forget([(created[-1], 1)])
    check()
    assert table.fds == {}


@pytest.fixture
def s(tmp_path: Path, mount_session: object) -> MountedSession:
    lower = tmp_path / "lower"
    lower.mkdir()
    for i in range(3):
        (lower / f"f{i}").write_bytes(b"lower %d\n" % i)
    # the daemon path (parts 9-14) whatever ASTRID_FS_PASSTHROUGH says
    return mount_session(lower, None, "--no-passthrough")  # type: ignore[operator, no-any-return]


def shim_counts(s: MountedSession) -> dict[str, int]:
    reply = s.control("stats")
    if reply.get("shim_writes") is None:
        pytest.fail("the FUSE shim has no write table (scripts/setup.sh builds it)")
    counts: dict[str, int] = reply["shim_writes"]
    ring = reply.get("io_uring")
    if reply.get("transport") == "io_uring" and ring:
        # (ASTRID_FS_IO_URING=1) the rings' queue threads answer what the
        # drain would: without a trio turn each too
        counts = {**counts, "drained": counts["drained"] + ring["ring_answered_in_c"]}
    dev = reply.get("dev_threads")
    if dev and dev["threads"]:
        # (over /dev/fuse, shim version 25) so do the threads reading it
        counts = {**counts, "drained": counts["drained"] + dev["answered_in_c"]}
    return counts


def shim_writes(s: MountedSession) -> int:
    return shim_counts(s)["writes"]


def append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def test_ioctls_are_answered_enotty_without_a_trio_turn(s: MountedSession) -> None:
    """The daemon implements no ioctl; every Python open() asks one (isatty:
    TCGETS). The shim answers ENOTTY itself (version 21), as libfuse's
    ENOSYS became before, on /dev/fuse and on the rings."""
    before = shim_counts(s)["drained"]
    for _ in range(40):
        for i in range(3):
            with open(s.mnt / f"f{i}") as f:  # (default buffering: isatty)
                assert f.read() == f"lower {i}\n"
                assert not f.isatty()
    fd = os.open(s.mnt / "f0", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as caught:
            fcntl.ioctl(fd, termios.TCGETS, bytes(64))
        assert caught.value.errno == errno.ENOTTY
    finally:
        os.close(fd)
    assert shim_counts(s)["drained"] - before >= 120


def test_writes_to_upper_files_are_answered_in_c_and_seen_whole(s: MountedSession) -> None:
    append(s.mnt / "f0", b"first\n")  # copy-up (the daemon's callback, part 14)
    before = shim_writes(s)
    for i in range(5):
        append(s.mnt / "f0", b"again %d\n" % i)
    assert shim_writes(s) - before == 5
    # Shim part 10: the probes and WRITEs of a stream of appends are answered
    # inside the receive call (each append: a GETXATTR, then its WRITE).
    assert shim_counts(s)["drained"] >= 5
    expected = b"lower 0\nfirst\n" + b"".join(b"again %d\n" % i for i in range(5))
    assert (s.upper / "f0").read_bytes() == expected
    assert (s.mnt / "f0").read_bytes() == expected
    up, seen = os.stat(s.upper / "f0"), os.stat(s.mnt / "f0")
    assert (seen.st_size, seen.st_mtime_ns) == (up.st_size, up.st_mtime_ns)
    assert (s.lower / "f0").read_bytes() == b"lower 0\n"  # never written


def test_writes_after_the_daemon_closed_and_reused_fds_land_in_their_files(
        s: MountedSession) -> None:
    # f0 and f1 get registered fds; `invalidate` closes them (layers
    # changed); new files then reuse those fd numbers. A stale table entry
    # would send f0's next write into one of the new files.
    append(s.mnt / "f0", b"a\n")
    append(s.mnt / "f1", b"b\n")
    s.control("invalidate")
    for i in range(4):
        (s.mnt / f"new{i}").write_bytes(b"new\n")
    append(s.mnt / "f0", b"c\n")
    append(s.mnt / "f1", b"d\n")
    assert (s.mnt / "f0").read_bytes() == b"lower 0\na\nc\n"
    assert (s.mnt / "f1").read_bytes() == b"lower 1\nb\nd\n"
    for i in range(4):
        assert (s.mnt / f"new{i}").read_bytes() == b"new\n"


def test_write_to_a_removed_open_file_goes_to_its_data(s: MountedSession) -> None:
    append(s.mnt / "f2", b"x\n")  # in the upper, fd registered
    fd = os.open(s.mnt / "f2", os.O_RDWR | os.O_APPEND)
    try:
        os.unlink(s.mnt / "f2")
        (s.mnt / "f2").write_bytes(b"another file\n")
        assert os.write(fd, b"y\n") == 2
        assert os.pread(fd, 100, 0) == b"lower 2\nx\ny\n"
    finally:
        os.close(fd)
    assert (s.mnt / "f2").read_bytes() == b"another file\n"


def test_first_writes_copy_up_and_are_answered_in_c(tmp_path: Path,
                                                    mount_session: object) -> None:
    # Shim part 14: a lower file's first WRITE is prepared by the daemon's
    # callback (the copy-up) inside the receive call, then written in C: no
    # write handler in Python, the lower never written, the copy whole.
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(40):
        (lower / "d" / f"f{i}").write_bytes(b"lower %d\n" % i)
    os.chmod(lower / "d" / "f0", 0o4755)  # a suid file: the write kills suid
    s: MountedSession = mount_session(lower, None, "--no-passthrough")  # type: ignore[operator]
    before = s.control("stats")
    if before.get("first_writes") is None:
        pytest.fail("the FUSE shim has no part 14 (scripts/setup.sh builds it)")
    for i in range(40):
        append(s.mnt / "d" / f"f{i}", b"appended\n")
    after = s.control("stats")
    assert after["first_writes"]["prepared"] - before["first_writes"]["prepared"] == 40
    assert after["first_writes"]["left"] == before["first_writes"]["left"]
    assert after["requests"].get("write", 0) == before["requests"].get("write", 0)
    assert after["shim_writes"]["writes"] - before["shim_writes"]["writes"] == 40
    for i in range(40):
        want = b"lower %d\nappended\n" % i
        assert (s.mnt / "d" / f"f{i}").read_bytes() == want
        assert (s.upper / "d" / f"f{i}").read_bytes() == want
        assert (lower / "d" / f"f{i}").read_bytes() == b"lower %d\n" % i
    # Written as root (CAP_FSETID): the kernel does not flag a kill, and the
    # copy keeps its mode like the lower file.
    assert os.stat(s.upper / "d" / "f0").st_mode & 0o7777 == 0o4755
    assert os.stat(lower / "d" / "f0").st_mode & 0o7777 == 0o4755


def test_concurrent_first_writes_past_the_fd_bound_all_land(tmp_path: Path,
                                                          mount_session: object) -> None:
    # What an agent's build does: several processes each append to many
    # project files at once, more files than the daemon keeps fds for, so
    # part 14's callback copies up and registers fds while the LRU closes
    # others (whose numbers the next copy-up reuses) inside the same drain.
    # Every append must land in its own file's copy; the project is never written.
    count, workers = DEFAULT_CAPACITY + 476, 3
    lower = tmp_path / "lower"
    for w in range(workers):
        (lower / f"w{w}").mkdir(parents=True)
        for i in range(count // workers):
            (lower / f"w{w}" / f"f{i}").write_bytes(b"%d/%d\n" % (w, i))
    s: MountedSession = mount_session(lower, None, "--no-passthrough")  # type: ignore[operator]
    script = ("import os, sys\n"
              "d = sys.argv[1]\n"
              "for rnd in (b'a', b'b'):\n"
              "    for n in sorted(os.listdir(d), key=lambda n: int(n[1:])):\n"
              "        fd = os.open(os.path.join(d, n), os.O_WRONLY | os.O_APPEND)\n"
              "        os.write(fd, rnd + n.encode() + b'\\n')\n"
              "        os.close(fd)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(s.mnt / f"w{w}")])
             for w in range(workers)]
    assert [p.wait(timeout=600) for p in procs] == [0] * workers
    stats = s.control("stats")
    assert stats["first_writes"]["prepared"] >= count - workers
    assert stats["fds"]["inode_fds"] <= DEFAULT_CAPACITY
    for w in range(workers):
        for i in range(count // workers):
            want = b"%d/%d\naf%d\nbf%d\n" % (w, i, i, i)
            assert (s.mnt / f"w{w}" / f"f{i}").read_bytes() == want
            assert (s.upper / f"w{w}" / f"f{i}").read_bytes() == want
            assert (lower / f"w{w}" / f"f{i}").read_bytes() == b"%d/%d\n" % (w, i)


def test_files_written_earlier_in_the_session_are_written_again_in_c(
        tmp_path: Path, mount_session: object) -> None:
    """An agent rewrites thousands of project files (each append a copy-up),
    then goes back to the first of them: their fds are still held (the bound
    is fd_capacity of the RLIMIT_NOFILE: 4,096 here), so the second round of
    WRITEs is answered in C and none goes to Python to reopen its file. With
    shim 34's bound of 1,024 every one of the 1,000 did (~60 µs each against
    ~30). What lands is each file's own bytes."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    capacity, per_dir = fd_capacity(hard), 1000
    if capacity < 3 * per_dir + 100:  # (CI: Debian's 20,000+ allows 4,096)
        missing_part(f"RLIMIT_NOFILE hard limit {hard}: the daemon keeps {capacity} fds")
    lower = tmp_path / "lower"
    for r in range(3):
        (lower / f"r{r}").mkdir(parents=True)
        for i in range(per_dir):
            (lower / f"r{r}" / f"f{i}").write_bytes(b"%d/%d\n" % (r, i))
    s: MountedSession = mount_session(lower, None, "--no-passthrough")  # type: ignore[operator]
    for r in range(3):
        for i in range(per_dir):
            append(s.mnt / f"r{r}" / f"f{i}", b"a\n")
    prepared = s.control("stats")["first_writes"]["prepared"]
    assert prepared >= 3 * per_dir - 3  # (each copy-up's first WRITE)
    written = shim_writes(s)
    for i in range(per_dir):
        append(s.mnt / "r0" / f"f{i}", b"b\n")
    stats = s.control("stats")
    assert stats["first_writes"]["prepared"] == prepared
    assert shim_writes(s) - written == per_dir
    assert stats["fds"]["inode_fds"] <= capacity
    for r in range(3):
        for i in range(per_dir):
            want = b"%d/%d\na\n" % (r, i) + (b"b\n" if r == 0 else b"")
            assert (s.upper / f"r{r}" / f"f{i}").read_bytes() == want
            assert (lower / f"r{r}" / f"f{i}").read_bytes() == b"%d/%d\n" % (r, i)


def test_the_fd_bound_follows_the_daemons_file_limit() -> None:
    assert fd_capacity(20_000) == DEFAULT_CAPACITY == 4096
    assert fd_capacity(8_000) == 2000
    assert fd_capacity(1024) == MIN_CAPACITY == 256
    assert fd_capacity(resource.RLIM_INFINITY) == DEFAULT_CAPACITY


def test_the_drain_stops_spinning_for_a_client_whose_requests_come_apart(
        s: MountedSession) -> None:
    """Shim version 18: after a request answered in C the drain polls for
    the next one without sleeping for a moment, so a stream of requests
    finds the thread running; a client whose requests come further apart
    than that makes it stop after a few empty spins (CPU is spent only on
    streams), until requests come close together again."""
    append(s.mnt / "f0", b"first\n")
    before = shim_counts(s)
    for i in range(100):
        append(s.mnt / "f0", b"%d\n" % i)
        time.sleep(0.002)  # a slow client (pacing, not synchronisation)
    after = shim_counts(s)
    hits = after["spin_hits"] - before["spin_hits"]
    misses = after["spin_misses"] - before["spin_misses"]
    assert misses <= DRAIN_SPIN_MISSES * (hits + 1), (hits, misses)
    assert after["drained"] - before["drained"] >= 100
    want = b"lower 0\nfirst\n" + b"".join(b"%d\n" % i for i in range(100))
    assert (s.upper / "f0").read_bytes() == want


def test_drain_spinning_can_be_turned_off(tmp_path: Path, mount_session: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRID_FS_DRAIN_SPIN_US", "0")
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "f").write_bytes(b"")
    s = mount_session(lower, None, "--no-passthrough")
    for i in range(200):
        append(s.mnt / "f", b"%d\n" % i)
    counts = shim_counts(s)
    assert counts["drained"] >= 200
    assert counts["spin_hits"] == counts["spin_misses"] == 0


def _setattrs(s: MountedSession) -> int:
    return int(s.control("stats")["requests"].get("setattr", 0))


def _as_upper(seen: os.stat_result, upper: Path) -> None:
    up = os.stat(upper)
    assert (seen.st_mode, seen.st_uid, seen.st_gid, seen.st_size, seen.st_atime_ns,
            seen.st_mtime_ns, seen.st_ctime_ns, seen.st_nlink) == \
        (up.st_mode, up.st_uid, up.st_gid, up.st_size, up.st_atime_ns, up.st_mtime_ns,
         up.st_ctime_ns, up.st_nlink)


def test_modes_and_times_of_upper_files_are_set_in_c_as_the_daemon_sets_them(
        s: MountedSession) -> None:
    """`touch`, `chmod +x` and the times `cp -a`, `tar x` and pip set on every
    file they write: a SETATTR to Python each. For a file the daemon holds a
    read-write fd for (in the upper layer, one name) the shim does the mode
    and the times itself (part 20, shim version 32), and what the mount then
    shows is the upper file's, under the overlay's inode number. An owner, a
    size, a lower file (copy-up), a hard-linked file and a removed open one
    stay the daemon's."""
    f = s.mnt / "new"
    f.write_bytes(b"data")  # an upper file the daemon holds an fd for
    ino = os.stat(f).st_ino
    lower_mode = (s.lower / "f1").stat().st_mode & 0o777
    before = _setattrs(s)
    os.chmod(f, 0o4750)
    _as_upper(os.stat(f), s.upper / "new")
    os.utime(f, ns=(1_000_000_123, 2_000_000_456))
    seen = os.stat(f)
    assert (seen.st_atime_ns, seen.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    _as_upper(seen, s.upper / "new")
    fd = os.open(f, os.O_RDONLY)
    try:
        os.utime(fd, ns=(3_000_000_000, 4_000_000_789))  # futimens: with a handle
    finally:
        os.close(fd)
    assert os.stat(f).st_mtime_ns == 4_000_000_789
    start = time.time_ns()
    subprocess.run(["touch", "-m", str(f)], check=True)  # the mtime now, the atime kept
    seen = os.stat(f)
    assert seen.st_mtime_ns >= start - 20_000_000 and seen.st_atime_ns == 3_000_000_000
    _as_upper(seen, s.upper / "new")
    assert seen.st_ino == ino and stat.S_IMODE(seen.st_mode) == 0o4750
    assert _setattrs(s) == before  # none reached Python
    # The daemon's: a lower file (copied up), an owner, a size, a second name.
    os.chmod(s.mnt / "f1", 0o600)
    _as_upper(os.stat(s.mnt / "f1"), s.upper / "f1")
    os.chown(f, 1234, 5678)
    os.truncate(f, 2)
    os.link(f, s.mnt / "second")
    os.chmod(f, 0o644)
    seen = os.stat(f)
    assert (seen.st_nlink, seen.st_uid, seen.st_size) == (2, 1234, 2)
    _as_upper(seen, s.upper / "new")
    assert _setattrs(s) - before == 4
    # A removed file still open: its fd's (the daemon's, nlink 0).
    fd = os.open(f, os.O_RDWR)
    try:
        os.unlink(s.mnt / "second")
        os.unlink(f)
        os.fchmod(fd, 0o600)
        st = os.fstat(fd)
        assert (stat.S_IMODE(st.st_mode), st.st_nlink) == (0o600, 0)
    finally:
        os.close(fd)
    assert _setattrs(s) - before == 5
    assert ((s.lower / "f1").stat().st_mode & 0o777, (s.lower / "f1").read_bytes()) == \
        (lower_mode, b"lower 1\n")  # never written


def test_modes_set_around_an_editors_save_land_on_the_right_file(s: MountedSession) -> None:
    """An editor saves by writing a temporary file and renaming it over the
    original while another process holds the original open: a chmod through
    the old fd is the old file's (now nameless: the daemon's), a chmod of the
    path the new file's (the shim's, part 20), and neither reaches the other."""
    path = s.mnt / "notes.txt"
    path.write_bytes(b"old")
    held = os.open(path, os.O_RDWR)
    try:
        tmp = s.mnt / ".notes.txt.swp"
        tmp.write_bytes(b"new")
        os.chmod(tmp, 0o640)  # (the shim's: an upper file with one name)
        os.rename(tmp, path)
        os.fchmod(held, 0o600)  # the old file, no name left
        os.chmod(path, 0o604)
        old, new = os.fstat(held), os.stat(path)
        assert (stat.S_IMODE(old.st_mode), old.st_nlink) == (0o600, 0)
        assert (stat.S_IMODE(new.st_mode), new.st_nlink) == (0o604, 1)
        _as_upper(new, s.upper / "notes.txt")
        assert os.pread(held, 8, 0) == b"old" and path.read_bytes() == b"new"
    finally:
        os.close(held)


def _getattrs(s: MountedSession) -> int:
    return int(s.control("stats")["requests"].get("getattr", 0))


def test_stats_of_files_just_written_are_answered_in_c(s: MountedSession) -> None:
    """Without writeback caching the kernel forgets a file's size and times
    after every WRITE, so whoever stats what it wrote (git's index after a
    checkout, make comparing times, an editor after a save) sent a GETATTR
    to Python per file. For a file the daemon holds a read-write fd for (an
    upper file with one name) the shim answers from that fd: the upper
    file's attributes under the overlay inode. A second name, and a removed
    file held open, stay the daemon's (a hard-linked copy's count, nlink 0)."""
    d = s.mnt / "out"
    d.mkdir()
    before = _getattrs(s)
    for i in range(50):
        p = d / f"f{i}"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for n in range(3):
                os.write(fd, b"x" * (100 + i))
                _as_upper(os.stat(p), s.upper / "out" / f"f{i}")
                assert os.fstat(fd).st_size == (n + 1) * (100 + i)
        finally:
            os.close(fd)
    assert _getattrs(s) - before <= 2  # (the directories': 150 files' before shim 34)
    assert shim_counts(s)["getattrs"] >= 150
    before = _getattrs(s)

    os.link(d / "f0", d / "second")
    append(d / "f0", b"more")
    seen = os.stat(d / "f0")
    assert seen.st_nlink == 2 and seen.st_size == 304
    _as_upper(seen, s.upper / "out" / "f0")
    held = os.open(d / "f1", os.O_RDWR)
    try:
        os.unlink(d / "f1")
        os.write(held, b"y")
        gone = os.fstat(held)
        assert gone.st_nlink == 0 and gone.st_size == 3 * 101  # ("y" written at offset 0)
    finally:
        os.close(held)
    assert _getattrs(s) - before >= 2


def test_a_hard_linked_lower_file_removed_while_open_shows_no_name(
        tmp_path: Path, mount_session: Any) -> None:
    """Found by the model test (hypothesis, on Debian 13): a file hard-linked
    in the lower layer, written through one name after the other name went,
    is copied up with a link in the index, so its upper file keeps nlink 1
    after its last name in the view goes. fstat and fchmod through an fd
    still open must say nlink 0 (the daemon's answer), not the upper file's
    count: the shim answers GETATTRs and SETATTRs only for files made in the
    session (upper-only numbers)."""
    lower = tmp_path / "lower"
    (lower / "d2").mkdir(parents=True)
    (lower / "f1").write_bytes(b"lower f1\n")
    os.link(lower / "f1", lower / "d2" / "f1")
    s: MountedSession = mount_session(lower, None, "--no-passthrough")
    assert os.stat(s.mnt / "d2" / "f1").st_nlink == 2  # (both names known to the daemon)
    fd = os.open(s.mnt / "f1", os.O_RDWR)
    try:
        os.unlink(s.mnt / "f1")
        os.pwrite(fd, b"", 0)
        assert os.fstat(fd).st_nlink == 1  # (d2/f1 still shows it)
    finally:
        os.close(fd)
    fd = os.open(s.mnt / "d2" / "f1", os.O_RDWR)
    try:
        os.pwrite(fd, b"L", 0)  # copied up: an upper file with an index link
        os.unlink(s.mnt / "d2" / "f1")
        assert os.pread(fd, 100, 0) == b"Lower f1\n"
        assert os.fstat(fd).st_nlink == 0
        os.fchmod(fd, 0o600)
        st = os.fstat(fd)
        assert (st.st_nlink, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    finally:
        os.close(fd)
    assert (lower / "f1").read_bytes() == b"lower f1\n"  # never written
