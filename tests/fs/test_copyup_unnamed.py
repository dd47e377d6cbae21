"""A regular file's copy-up built as an unnamed file (O_TMPFILE) and linked
into place (copyup.py, tmpfile.py), and its base content the same way
kept in the session's pack (basecontent.py): a copy that fails halfway
leaves nothing in the work dir, a copy made again over an upper copy
replaces it whole, a base kept already stands, and the named-temp path
still works where a file system has no unnamed files."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.overlay import basecontent, copyup, cthreads, tmpfile
from astrid_fs.overlay.inodes import ROOT_INO
from astrid_fs.overlay.layers import Layers
from astrid_fs.overlay.overlay import Overlay
from astrid_fs.overlay.whiteout import OverlayXattrs, get_origin
from tests.fs.conftest import kept_base, kept_body, unnamed_fds
from tests.fs.test_workloads import daemon_pid
from tests.support.mounts import MountedSession

NAMES = OverlayXattrs("trusted" if os.geteuid() == 0 else "user")


def _session(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(lower, upper, work dir, session dir) of a session that keeps bases."""
    session = tmp_path / "session"
    lower, upper, tmp = tmp_path / "lower", session / "upper", session / "work" / "astrid"
    for d in (lower, upper, tmp):
        d.mkdir(parents=True)
    (session / "bases.sqlite").write_bytes(b"")
    return lower, upper, tmp, session


def _copy_up(lower: Path, upper: Path, tmp: Path, rel: str) -> None:
    copyup.copy_up(os.fsencode(lower / rel), os.fsencode(upper / rel), os.fsencode(tmp), NAMES,
                   os.fsencode(rel), sync=False)


def test_link_never_replaces(tmp_path: Path) -> None:
    fd = tmpfile.open_unnamed(os.fsencode(tmp_path))
    assert fd is not None  # ext4 and tmpfs, where the tests run, have O_TMPFILE
    try:
        os.write(fd, b"whole")
        (tmp_path / "taken").write_bytes(b"mine")
        with pytest.raises(FileExistsError):
            tmpfile.link(fd, os.fsencode(tmp_path / "taken"))
        tmpfile.link(fd, os.fsencode(tmp_path / "named"))
    finally:
        os.close(fd)
    assert (tmp_path / "taken").read_bytes() == b"mine"
    assert (tmp_path / "named").read_bytes() == b"whole"


def test_copy_up_links_a_whole_copy_and_leaves_no_temp(tmp_path: Path) -> None:
    lower, upper, tmp, session = _session(tmp_path)
    (lower / "a").write_bytes(b"project\n")
    os.utime(lower / "a", ns=(1_000_000_000, 2_000_000_000))
    _copy_up(lower, upper, tmp, "a")
    assert (upper / "a").read_bytes() == b"project\n"
    assert os.lstat(upper / "a").st_mtime_ns == 2_000_000_000
    assert os.lstat(upper / "a").st_nlink == 1
    origin = get_origin(os.fsencode(upper / "a"), NAMES)
    assert origin is not None and origin.path == "a"
    assert kept_base(session, "a") == (b"project\n", 2_000_000_000)
    assert os.listdir(tmp) == []


def test_a_copy_that_fails_halfway_leaves_nothing(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    lower, upper, tmp, _ = _session(tmp_path)
    (lower / "a").write_bytes(b"project\n")

    def no_space(fd: int, path: bytes) -> None:
        raise OSError(errno.ENOSPC, "no space")

    monkeypatch.setattr(tmpfile, "link", no_space)
    with pytest.raises(OSError):
        _copy_up(lower, upper, tmp, "a")
    assert not (upper / "a").exists()
    assert os.listdir(tmp) == []


def test_a_copy_made_again_replaces_the_upper_copy(tmp_path: Path) -> None:
    """unsynced.py re-copies a torn copy-up over the upper file it left."""
    lower, upper, tmp, _ = _session(tmp_path)
    (lower / "a").write_bytes(b"project\n")
    _copy_up(lower, upper, tmp, "a")
    (upper / "a").write_bytes(b"")  # torn
    _copy_up(lower, upper, tmp, "a")
    assert (upper / "a").read_bytes() == b"project\n"
    assert os.listdir(tmp) == []


def test_a_kept_base_stands(tmp_path: Path) -> None:
    lower, upper, tmp, session = _session(tmp_path)
    (lower / "a").write_bytes(b"first\n")
    _copy_up(lower, upper, tmp, "a")
    os.unlink(upper / "a")
    (lower / "a").write_bytes(b"second\n")
    _copy_up(lower, upper, tmp, "a")
    assert (upper / "a").read_bytes() == b"second\n"
    assert kept_body(session, "a") == b"first\n"
    assert os.listdir(tmp) == []


def test_without_unnamed_files_a_named_temp_does(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    lower, upper, tmp, session = _session(tmp_path)
    (lower / "d").mkdir()
    (upper / "d").mkdir()
    (lower / "d" / "a").write_bytes(b"project\n")
    monkeypatch.setattr(tmpfile, "open_unnamed", lambda dir_path: None)
    _copy_up(lower, upper, tmp, "d/a")
    assert (upper / "d" / "a").read_bytes() == b"project\n"
    assert get_origin(os.fsencode(upper / "d" / "a"), NAMES) is not None
    assert kept_body(session, "d/a") == b"project\n"
    _copy_up(lower, upper, tmp, "d/a")  # again, over it: replaced
    assert (upper / "d" / "a").read_bytes() == b"project\n"
    assert os.listdir(tmp) == []


def test_a_copy_can_hand_over_its_fd(tmp_path: Path) -> None:
    """`held`: the unnamed copy's fd stays open once linked, read-write, on
    the upper file itself (OverlayCore.copy_up_open makes it the inode fd
    instead of opening the copy again by path)."""
    lower, upper, tmp, session = _session(tmp_path)
    (lower / "a").write_bytes(b"project\n")
    held: list[int] = []
    copyup.copy_up(os.fsencode(lower / "a"), os.fsencode(upper / "a"), os.fsencode(tmp), NAMES,
                   b"a", sync=False, held=held)
    assert len(held) == 1
    fd = held[0]
    try:
        assert os.fstat(fd).st_ino == os.lstat(upper / "a").st_ino
        assert os.pread(fd, 100, 0) == b"project\n"
        os.pwrite(fd, b"agent\n", 8)
    finally:
        os.close(fd)
    assert (upper / "a").read_bytes() == b"project\nagent\n"
    assert (lower / "a").read_bytes() == b"project\n"
    assert kept_body(session, "a") == b"project\n"
    held.clear()  # a copy that is not an unnamed file hands over nothing
    (lower / "d").mkdir()
    copyup.copy_up(os.fsencode(lower / "d"), os.fsencode(upper / "d"), os.fsencode(tmp), NAMES,
                   b"d", sync=False, held=held)
    assert held == [] and (upper / "d").is_dir()


def test_copy_up_open_gives_a_read_write_fd_on_the_upper_copy(tmp_path: Path) -> None:
    """The first write's inode fd (files.py): the copy's own fd for a plain
    file, one opened by path for a hard-linked lower file (its copy is the
    link index's) and for a file already copied up; every one read-write on
    the upper file, the lower untouched."""
    lower, upper, tmp, _ = _session(tmp_path)
    (lower / "a").write_bytes(b"one\n")
    (lower / "h1").write_bytes(b"two\n")
    os.link(lower / "h1", lower / "h2")
    ov = Overlay(Layers(os.fsencode(lower), os.fsencode(upper), NAMES), os.fsencode(tmp),
                 redirects=True)
    for name, want in (("a", b"one\n"), ("h1", b"two\n"), ("a", b"one\n!")):
        node, _ = ov.lookup(ROOT_INO, os.fsencode(name))
        fd = ov.copy_up_open(node)
        try:
            assert node.in_upper
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
            assert os.fstat(fd).st_ino == os.lstat(upper / name).st_ino
            assert os.pread(fd, 100, 0) == want
            os.pwrite(fd, b"!", len(want))
        finally:
            os.close(fd)
    assert (upper / "a").read_bytes() == b"one\n!!"
    assert (upper / "h1").read_bytes() == b"two\n!"
    assert [(lower / n).read_bytes() for n in ("a", "h1", "h2")] == [b"one\n", b"two\n",
                                                                    b"two\n"]
    assert unnamed_fds(tmp) == []


def test_a_threads_library_of_another_version_is_not_loaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 2 of copyup_threads.c made its files write-only, which the
    first write's inode fd cannot read through: such a build (one not
    rebuilt since) is not loaded, and files are made in Python instead."""
    src = tmp_path / "copyup_threads.c"
    src.write_text("int astrid_copyup_threads_version(void) { return 2; }\n")
    lib = tmp_path / "libastrid_copyup_threads.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    monkeypatch.setattr(cthreads, "LIB", lib)
    cthreads.lib.cache_clear()
    try:
        assert cthreads.lib() is None
    finally:
        monkeypatch.undo()
        cthreads.lib.cache_clear()
    assert cthreads.lib() is not None  # this tree's own build, version 3


def test_keep_bytes_outside_a_session_keeps_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    basecontent.keep_bytes(os.fsencode(work), b"a", b"content", 1)
    assert sorted(os.listdir(tmp_path)) == ["work"]
    assert os.listdir(work) == []


def test_files_made_ahead_are_fresh_unnamed_files_each(tmp_path: Path, native: bool) -> None:
    """make_ahead (the daemon's): a thread keeps AHEAD unnamed files open;
    open_unnamed hands them out, each once, and makes its own when none
    waits. Stopping closes what was not taken."""
    d = os.fsencode(tmp_path)
    ahead = tmpfile.make_ahead(d, size=4, native=native)
    assert ("thread" in ahead.stats()) == native
    try:
        assert ahead.wait_full(timeout=30), (ahead.stats(), cthreads.make_stats())
        fds = [tmpfile.open_unnamed(d) for _ in range(12)]
        assert all(fd is not None for fd in fds)
        sts = [os.fstat(fd) for fd in fds if fd is not None]
        assert len({st.st_ino for st in sts}) == 12
        assert all(st.st_nlink == 0 and st.st_size == 0 for st in sts)
        # read-write, made ahead or not: a copy's fd becomes the inode fd
        assert {fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE for fd in fds
                if fd is not None} == {os.O_RDWR}
        assert {stat.S_IMODE(st.st_mode) for st in sts} <= {0o600 & ~_umask()}
        counts = ahead.stats()
        assert counts["taken"] >= 4 and counts["taken"] + counts["made_on_request"] == 12
        assert fds[0] is not None
        os.write(fds[0], b"linked")
        tmpfile.link(fds[0], os.fsencode(tmp_path / "named"))
        for fd in fds:
            assert fd is not None
            os.close(fd)
        # The thread refills from half empty: left with 3 of 4 it rests. Take
        # what waits, then one more (made here): it refills whole.
        while True:
            waited = ahead.stats()["ready"]
            fd = tmpfile.open_unnamed(d)
            assert fd is not None
            os.close(fd)
            if not waited:
                break
        assert ahead.wait_full(timeout=30), (ahead.stats(), cthreads.make_stats())
        waiting = unnamed_fds(tmp_path)
        assert len(waiting) == 4
    finally:
        tmpfile.stop_ahead(d)
    assert unnamed_fds(tmp_path) == []
    for fd in waiting:
        with pytest.raises(OSError) as e:
            os.fstat(fd)
        assert e.value.errno == errno.EBADF
    assert os.listdir(tmp_path) == ["named"]
    assert (tmp_path / "named").read_bytes() == b"linked"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_copies_from_files_made_ahead_look_made_now(tmp_path: Path, native: bool) -> None:
    """A file made ahead may wait long: the copy-up sets what a fresh copy
    has (owner, mode, times, origin), and its ctime is that of the copy-up,
    not of the making."""
    lower, upper, tmp, session = _session(tmp_path)
    for i in range(20):
        (lower / f"f{i}").write_bytes(b"project %d\n" % i)
        os.chmod(lower / f"f{i}", 0o640 + (i % 2))
        os.utime(lower / f"f{i}", ns=(1_000_000_000, 2_000_000_000 + i))
    ahead = tmpfile.make_ahead(os.fsencode(tmp), size=8, native=native)
    try:
        assert ahead.wait_full(timeout=30), (ahead.stats(), cthreads.make_stats())
        made = max(os.fstat(fd).st_ctime_ns for fd in unnamed_fds(tmp))
        probe = os.open(tmp_path, os.O_TMPFILE | os.O_WRONLY, 0o600)
        try:  # until the (coarse) clock ctimes come from has moved on
            while os.fstat(probe).st_ctime_ns <= made:
                os.fchmod(probe, 0o600)
        finally:
            os.close(probe)
        for i in range(20):
            _copy_up(lower, upper, tmp, f"f{i}")
        assert ahead.stats()["taken"] >= 8
    finally:
        tmpfile.stop_ahead(os.fsencode(tmp))
    for i in range(20):
        st, lst = os.lstat(upper / f"f{i}"), os.lstat(lower / f"f{i}")
        assert (upper / f"f{i}").read_bytes() == b"project %d\n" % i
        assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink) == \
            (lst.st_mode, lst.st_uid, lst.st_gid, lst.st_mtime_ns, 1)
        assert st.st_ctime_ns > made
        assert get_origin(os.fsencode(upper / f"f{i}"), NAMES) is not None
        assert kept_body(session, f"f{i}") == b"project %d\n" % i
    assert os.listdir(tmp) == []


def test_without_unnamed_files_the_thread_stops_and_copies_still_land(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lower, upper, tmp, session = _session(tmp_path)
    (lower / "a").write_bytes(b"project\n")

    def refuse(dir_path: bytes) -> int:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(tmpfile, "_make", refuse)
    ahead = tmpfile.make_ahead(os.fsencode(tmp), size=4, native=False)  # (_make patched)
    try:
        assert not ahead.wait_full(timeout=30)
        assert ahead.stats()["stopped"] == os.strerror(errno.EOPNOTSUPP)
        _copy_up(lower, upper, tmp, "a")
    finally:
        tmpfile.stop_ahead(os.fsencode(tmp))
    assert (upper / "a").read_bytes() == b"project\n"
    assert kept_body(session, "a") == b"project\n"
    assert os.listdir(tmp) == []


def test_after_a_full_disk_the_thread_makes_files_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC stops the thread (copy-ups make their own files, or fail as the
    disk does); the first file a copy-up then makes itself sets it going
    again, where it used to stay stopped until the next mount."""
    lower, upper, tmp, session = _session(tmp_path)
    for name in ("a", "b"):
        (lower / name).write_bytes(b"project\n")
    real = tmpfile._make
    full = threading.Event()
    full.set()

    def make(dir_path: bytes) -> int:
        if full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(dir_path)

    monkeypatch.setattr(tmpfile, "_make", make)
    ahead = tmpfile.make_ahead(os.fsencode(tmp), size=4, native=False)  # (_make patched;
    # the C thread meets a real full file system in test_copyup_threads.py)
    try:
        assert not ahead.wait_full(timeout=30)
        assert ahead.stats()["stopped"] == os.strerror(errno.ENOSPC)
        with pytest.raises(OSError) as caught:  # the disk is full for copy-ups too
            _copy_up(lower, upper, tmp, "a")
        assert caught.value.errno == errno.ENOSPC
        assert not (upper / "a").exists()
        full.clear()  # space again
        _copy_up(lower, upper, tmp, "b")  # makes its own files: the thread resumes
        assert ahead.wait_full(timeout=30), (ahead.stats(), cthreads.make_stats())
        stats = ahead.stats()
        assert "stopped" not in stats and stats["resumed"] >= 1 and stats["ready"] == 4
        fd = tmpfile.open_unnamed(os.fsencode(tmp))  # taken from the pool
        assert fd is not None and ahead.stats()["taken"] >= 1
        os.close(fd)
    finally:
        tmpfile.stop_ahead(os.fsencode(tmp))
    assert (upper / "b").read_bytes() == b"project\n"
    assert kept_body(session, "b") == b"project\n"


def test_copy_ups_through_a_mount_take_files_made_ahead(
        tmp_path: Path, mount_session: Callable[..., MountedSession]) -> None:
    """Copy-ups take unnamed files the C thread made (on a quick disk too,
    the default since 2026-12-05); the thread starts at the mount's first
    copy-up, so a mount that reads and creates but never copies up holds no
    unnamed files (32 inodes and fds each: hundreds of read-only sessions)."""
    lower = tmp_path / "lower"
    lower.mkdir()
    for i in range(50):
        (lower / f"f{i}").write_bytes(b"project %d\n" % i)
    s = mount_session(lower, None)
    assert (s.mnt / "f0").read_bytes() == b"project 0\n"
    (s.mnt / "new").write_bytes(b"made in the session\n")
    assert s.control("stats")["unnamed_ahead"] is None
    fds = f"/proc/{daemon_pid(s)}/fd"
    assert not [n for n in os.listdir(fds) if "(deleted)" in os.readlink(f"{fds}/{n}")]
    for i in range(50):
        with open(s.mnt / f"f{i}", "ab") as f:
            f.write(b"session\n")
    ahead = s.control("stats")["unnamed_ahead"]
    assert ahead["taken"] > 0 and ahead["thread"] == "C", ahead
    for i in range(50):
        assert (s.root / "upper" / f"f{i}").read_bytes() == b"project %d\nsession\n" % i
        assert kept_body(s.root, f"f{i}") == b"project %d\n" % i
