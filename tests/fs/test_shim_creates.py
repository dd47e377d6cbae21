"""CREATEs made in the FUSE shim (fuse/create_table.py, shim part 22).

What agents do all day inside a session: `cp -a`, `tar x`, a build writing
its objects, a save that makes a new file. Each file is one CREATE; the shim
makes it in C where the daemon would have made it the same way, and the
daemon learns of it (node, lookup, fd) before any request reaches Python.
Checked through real mounts: which CREATEs reach Python (the daemon's
request counter), what the mount and the upper layer then show (owner,
group from a set-group-ID directory, mode, content), what the daemon decides
instead (a whiteout, a name the project gained, a listed directory), that
listings, forgets, numbers ext4 gives again and the fd bound hold, and that a
commit lands what the shim made.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fs.test_shim_lookups import forget_all, settles
from tests.fs.test_workloads import FD_CACHE, daemon_pid, open_fds
from tests.fs.test_write_table import shim_writes
from tests.support.mounts import MountedSession

Mount = Callable[..., MountedSession]


@pytest.fixture
def s(tmp_path: Path, mount_session: Mount) -> MountedSession:
    lower = tmp_path / "lower"
    (lower / "src").mkdir(parents=True)
    for i in range(3):
        (lower / "src" / f"l{i}.c").write_bytes(b"lower %d\n" % i)
    # the daemon path whatever ASTRID_FS_PASSTHROUGH says (part 22 is off with passthrough)
    return mount_session(lower, None, "--no-passthrough")


def creates(s: MountedSession) -> tuple[int, int]:
    """(CREATEs made by the shim, CREATEs Python answered)."""
    reply = s.control("stats")
    made = reply.get("shim_creates")
    if made is None:
        pytest.fail("CREATEs are not made in C: is the FUSE shim (version 34) loaded?")
    return int(made["made"]), int(reply["requests"].get("create", 0))


def make(path: Path, data: bytes, mode: int = 0o644,
         flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL) -> None:
    fd = os.open(path, flags, mode)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def test_files_made_in_a_new_directory_are_made_in_c_as_the_daemon_makes_them(
        s: MountedSession) -> None:
    (s.mnt / "out").mkdir()
    made0, py0 = creates(s)
    writes0 = shim_writes(s)
    old = os.umask(0o022)
    try:
        for i in range(200):
            make(s.mnt / "out" / f"f{i}.o", b"object %d\n" % i, 0o755 if i % 2 else 0o640)
    finally:
        os.umask(old)
    made, py = creates(s)
    assert made - made0 == 200 and py == py0
    assert shim_writes(s) - writes0 == 200  # (into the fds the shim made: part 9's table)
    for i in range(200):
        seen, up = os.stat(s.mnt / "out" / f"f{i}.o"), os.stat(s.upper / "out" / f"f{i}.o")
        assert (s.mnt / "out" / f"f{i}.o").read_bytes() == b"object %d\n" % i
        assert stat.S_IMODE(seen.st_mode) == (0o755 if i % 2 else 0o640)
        assert (seen.st_mode, seen.st_uid, seen.st_gid, seen.st_size, seen.st_mtime_ns,
                seen.st_nlink) == (up.st_mode, up.st_uid, up.st_gid, up.st_size,
                                   up.st_mtime_ns, up.st_nlink)
        assert seen.st_ino == up.st_ino | (1 << 62)  # the daemon's upper-only number
    assert sorted(os.listdir(s.mnt / "out")) == sorted(f"f{i}.o" for i in range(200))
    assert not (s.lower / "out").exists()  # the lower layer is never written


def test_a_file_made_by_another_user_is_theirs_and_takes_a_setgid_directorys_group(
        s: MountedSession) -> None:
    shared = s.mnt / "shared"
    shared.mkdir()
    os.chown(shared, 0, 4242)
    os.chmod(shared, 0o2777)
    plain = s.mnt / "plain"
    plain.mkdir(0o777)
    os.chmod(plain, 0o777)
    made0, py0 = creates(s)
    for d in (shared, plain):
        # (noclobber: the shell's redirect opens with O_CREAT | O_EXCL; the
        # directory entered before the switch: the test's temp dirs are 0700)
        subprocess.run(["sh", "-c", "umask 022; set -C; printf mine > mine"], cwd=d,
                       user=1234, group=5678, extra_groups=[], check=True)
    made, py = creates(s)
    assert made - made0 == 2 and py == py0
    in_shared, in_plain = os.stat(shared / "mine"), os.stat(plain / "mine")
    assert (in_shared.st_uid, in_shared.st_gid) == (1234, 4242)
    assert (in_plain.st_uid, in_plain.st_gid) == (1234, 5678)
    assert stat.S_IMODE(in_plain.st_mode) == 0o644 and (plain / "mine").read_bytes() == b"mine"
    assert os.stat(s.upper / "shared" / "mine").st_gid == 4242


def test_over_a_whiteout_and_over_a_name_the_project_gained_the_daemon_decides(
        s: MountedSession, tmp_path: Path) -> None:
    src = s.mnt / "src"
    os.listdir(src)  # (listed: the first create below is the daemon's anyway)
    make(src / "new.c", b"new")  # the daemon's: listed directory; now unlisted
    made0, py0 = creates(s)
    os.unlink(src / "l0.c")  # a whiteout now hides the lower file
    make(src / "l0.c", b"again")  # the shim declines (O_EXCL meets the whiteout)
    assert (src / "l0.c").read_bytes() == b"again"
    assert (s.lower / "src" / "l0.c").read_bytes() == b"lower 0\n"
    # A name the kernel holds as absent that the project then gains: an
    # O_CREAT without O_EXCL trusts the cached miss and sends the CREATE (with
    # O_EXCL the kernel looks the name up again itself), and the daemon
    # decides (its answer is its own: the session never writes the project).
    with pytest.raises(FileNotFoundError):
        os.stat(src / "late.c")
    (s.lower / "src" / "late.c").write_bytes(b"project")
    try:
        make(src / "late.c", b"session", flags=os.O_WRONLY | os.O_CREAT)
    except OSError as e:
        assert e.errno == errno.EEXIST
    assert (s.lower / "src" / "late.c").read_bytes() == b"project"
    made, py = creates(s)
    assert made == made0 and py - py0 == 2


def test_listings_show_files_made_in_c_before_and_after_a_listing(s: MountedSession) -> None:
    d = s.mnt / "gen"
    d.mkdir()
    names: list[str] = []
    made0, py0 = creates(s)
    for round_ in range(4):
        for i in range(50):
            names.append(f"r{round_}-{i}")
            make(d / names[-1], b"x")
        # a reader part way through, then the whole listing
        with os.scandir(d) as it:
            next(it)
        assert sorted(os.listdir(d)) == sorted(names)
    made, py = creates(s)
    # after each listing the daemon makes the first file (it drops the
    # kernel's listing) and the shim the rest
    assert made - made0 == 200 - 3 and py - py0 == 3


def test_forgotten_files_made_in_c_leave_the_daemon_and_come_back(s: MountedSession) -> None:
    d = s.mnt / "forget"
    d.mkdir()
    before = s.control("stats")["nodes"]
    for i in range(300):
        make(d / f"f{i}", b"%d" % i)
    assert s.control("stats")["nodes"] >= before + 300
    forget_all(s)
    # every lookup counted once: the kernel's FORGETs take every node back
    left = settles(lambda: int(s.control("stats")["nodes"]), lambda n: n <= before + 1)
    assert left <= before + 1
    for i in range(300):
        assert (d / f"f{i}").read_bytes() == b"%d" % i


def test_numbers_ext4_gives_again_are_new_files_to_the_kernel(s: MountedSession) -> None:
    d = s.mnt / "churn"
    d.mkdir()
    seen: set[tuple[int, int]] = set()
    for i in range(300):
        p = d / "tmp.o"
        make(p, b"round %d" % i)
        st = os.stat(p)
        assert p.read_bytes() == b"round %d" % i
        seen.add((st.st_ino, st.st_size))
        os.unlink(p)
    made, _ = creates(s)
    assert made >= 290
    assert len({ino for ino, _ in seen}) < 300  # ext4 gave numbers again


def test_write_only_files_made_in_c_read_back_through_another_open(s: MountedSession) -> None:
    d = s.mnt / "w"
    d.mkdir()
    made0, _ = creates(s)
    p = d / "log"
    wfd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        rfd = os.open(p, os.O_RDONLY)
        try:
            for i in range(20):
                os.write(wfd, b"line %d\n" % i)
                assert os.pread(rfd, 4096, 0).count(b"\n") == i + 1
        finally:
            os.close(rfd)
    finally:
        os.close(wfd)
    assert creates(s)[0] - made0 == 1
    assert os.stat(p).st_size == os.stat(s.upper / "w" / "log").st_size


def test_files_made_in_c_stay_within_the_daemons_fd_bound(s: MountedSession) -> None:
    d = s.mnt / "many"
    d.mkdir()
    pid = daemon_pid(s)
    before = open_fds(pid)
    made0, py0 = creates(s)
    n = FD_CACHE + 1500
    for i in range(n):
        make(d / f"f{i}", b"x")
    made, py = creates(s)  # (absorbs first: every fd adopted, the bound applied)
    assert made - made0 + py - py0 == n and made - made0 >= n - n // 100
    assert open_fds(pid) <= before + FD_CACHE + 64
    assert sum(1 for _ in os.scandir(d)) == n


def test_files_made_in_c_are_committed(s: MountedSession) -> None:
    d = s.mnt / "build"
    d.mkdir()
    for i in range(50):
        make(d / f"a{i}", b"artifact %d" % i, 0o600)
    assert creates(s)[0] >= 50
    s.cli("commit", s.name)
    for i in range(50):
        landed = s.lower / "build" / f"a{i}"
        assert landed.read_bytes() == b"artifact %d" % i
        assert stat.S_IMODE(os.stat(landed).st_mode) == 0o600


def test_creates_are_the_daemons_when_turned_off(tmp_path: Path, mount_session: Mount,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRID_FS_C_CREATE", "0")
    s = mount_session(None, None, "--no-passthrough")
    (s.mnt / "d").mkdir()
    for i in range(20):
        make(s.mnt / "d" / f"f{i}", b"x")
    reply = s.control("stats")
    assert reply["shim_creates"] is None and reply["requests"]["create"] == 20


def test_a_copy_of_a_project_tree_makes_its_files_in_c(s: MountedSession, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    for d in range(5):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(40):
            p = src / f"d{d}" / f"f{f}"
            p.write_bytes(b"%d/%d\n" % (d, f))
            os.utime(p, ns=(1_600_000_000_000_000_000 + f, 1_600_000_000_000_000_000 + d))
    made0, py0 = creates(s)
    absorbs0 = s.control("stats")["shim_lookups"]["absorbs"]
    subprocess.run(["cp", "-a", str(src), str(s.mnt / "tree")], check=True)
    made, py = creates(s)
    assert made - made0 == 200 and py == py0
    # Nothing per file reached the trio thread: each request that does costs
    # a turn of its loop and an absorb first. (The ACL `cp -a` sets on each
    # copy was refused in the op table only, after the trio thread took it:
    # 200 absorbs.) Its mkdirs and the directories' times are the daemon's.
    absorbs = s.control("stats")["shim_lookups"]["absorbs"] - absorbs0
    assert absorbs <= 30, absorbs
    for d in range(5):
        for f in range(40):
            a, b = os.stat(src / f"d{d}" / f"f{f}"), os.stat(s.mnt / "tree" / f"d{d}" / f"f{f}")
            assert (a.st_mode, a.st_mtime_ns, a.st_size) == (b.st_mode, b.st_mtime_ns, b.st_size)

