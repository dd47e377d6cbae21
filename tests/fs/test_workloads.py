"""What agents do to a mount for an hour: thousands of creates, deletes of
open files, renames over open directories, a commit under open files, tools
that copy permissions. Each test here failed on the code before issue 9.

The daemon's open fds are counted from /proc (its pid is in the session's
mount state); counts must stay bounded by the fd cache, never grow with the
number of files touched.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.cli.daemonlink import DaemonLink
from astrid_fs.fuse.control import request
from astrid_fs.overlay.files import DEFAULT_CAPACITY
from astrid_fs.review.commit import commit
from astrid_fs.session import open_session
from tests.support.mounts import MountedSession, loop_ext4, require_fuse, ring_threads

MountFactory = Callable[..., MountedSession]
FD_CACHE = DEFAULT_CAPACITY  # (this machine's RLIMIT_NOFILE allows it: fd_capacity)


def daemon_pid(mounted: MountedSession) -> int:
    state = open_session(mounted.name, mounted.home).mount_state()
    assert state is not None
    return state.pid


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_creates_do_not_leak_fds(mount_session: MountFactory) -> None:
    mounted = mount_session()
    pid = daemon_pid(mounted)
    before = open_fds(pid)
    for i in range(FD_CACHE + 600):
        (mounted.mnt / f"f{i}").write_text("x")
    # Bounded by the fd cache, not by the number of files created.
    assert open_fds(pid) <= before + FD_CACHE + 16
    for i in range(FD_CACHE + 600):
        (mounted.mnt / f"f{i}").unlink()
    (mounted.mnt / "after").write_text("still works")
    assert (mounted.mnt / "after").read_text() == "still works"


def test_create_read_unlink_cycles_keep_reads_working(mount_session: MountFactory) -> None:
    """513 rounds used to fill the fd cache with pinned fds of deleted files,
    then every new file read EBADF."""
    mounted = mount_session()
    pid = daemon_pid(mounted)
    before = open_fds(pid)
    for i in range(700):
        p = mounted.mnt / f"c{i}"
        p.write_text(f"round {i}")
        assert p.read_text() == f"round {i}"
        p.unlink()
    (mounted.mnt / "new").write_text("fresh")
    assert (mounted.mnt / "new").read_text() == "fresh"
    assert open_fds(pid) <= before + 16  # deleted files' fds were closed at forget


def test_deleted_open_file_stays_readable_and_writable(mount_session: MountFactory) -> None:
    mounted = mount_session()
    p = mounted.mnt / "tmpfile"
    p.write_text("hello")
    with open(p, "r+b") as f:
        os.unlink(p)
        assert f.read() == b"hello"
        f.write(b" world")
        f.flush()
        f.seek(0)
        assert f.read() == b"hello world"
        assert os.fstat(f.fileno()).st_nlink == 0


def test_rename_over_open_directory_keeps_holder_stat(mount_session: MountFactory) -> None:
    mounted = mount_session()
    (mounted.mnt / "a").mkdir()
    (mounted.mnt / "b").mkdir()
    fd = os.open(mounted.mnt / "b", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(mounted.mnt / "a", mounted.mnt / "b")
        st = os.fstat(fd)  # ENOENT before the fix
        assert st.st_nlink == 0
        assert os.path.isdir(mounted.mnt / "b")
    finally:
        os.close(fd)


def test_rmdir_of_open_directory_keeps_holder_stat(mount_session: MountFactory) -> None:
    mounted = mount_session()
    (mounted.mnt / "d").mkdir()
    fd = os.open(mounted.mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(mounted.mnt / "d")
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)


def test_open_files_survive_commit(mount_session: MountFactory, tmp_path: Path) -> None:
    lower = tmp_path / "project"
    lower.mkdir()
    (lower / "old.txt").write_text("old\n")
    mounted = mount_session(lower)
    session = open_session(mounted.name, mounted.home)
    (mounted.mnt / "new.txt").write_text("new\n")
    with open(mounted.mnt / "old.txt", "a") as f:
        f.write("edited\n")
    reader = open(mounted.mnt / "new.txt", "rb")  # noqa: SIM115
    writer = open(mounted.mnt / "old.txt", "r+b")  # noqa: SIM115
    try:
        commit(session, [], mount=DaemonLink(session))
        assert (lower / "new.txt").read_text() == "new\n"
        assert (lower / "old.txt").read_text() == "old\nedited\n"
        # ENOENT on all three before the fix.
        assert reader.read() == b"new\n"
        assert os.fstat(reader.fileno()).st_size == 4
        assert writer.read() == b"old\nedited\n"
        writer.write(b"more\n")
        writer.flush()
        assert os.fstat(writer.fileno()).st_size == len(b"old\nedited\nmore\n")
    finally:
        reader.close()
        writer.close()
    # The write after the commit is a new change of the session; the lower
    # keeps the committed content until the next commit.
    assert (mounted.mnt / "old.txt").read_text() == "old\nedited\nmore\n"
    assert (lower / "old.txt").read_text() == "old\nedited\n"


def test_acl_xattrs_answer_eopnotsupp(mount_session: MountFactory) -> None:
    mounted = mount_session()
    p = mounted.mnt / "f"
    p.write_text("x")
    acl = b"\x02\x00\x00\x00\x01\x00\x06\x00\xff\xff\xff\xff\x04\x00\x04\x00\xff\xff\xff\xff" \
          b"\x20\x00\x04\x00\xff\xff\xff\xff"
    with pytest.raises(OSError) as raised:
        os.setxattr(p, "system.posix_acl_access", acl)
    assert raised.value.errno == errno.EOPNOTSUPP


def test_cp_a_and_sed_i_into_the_mount_are_quiet(mount_session: MountFactory,
                                                 tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("one\n")
    os.chmod(src / "f.txt", 0o640)
    mounted = mount_session()
    cp = subprocess.run(["cp", "-a", str(src), str(mounted.mnt / "copy")],
                        capture_output=True, text=True, check=False)
    assert cp.returncode == 0, cp.stderr
    assert cp.stderr == ""
    assert (mounted.mnt / "copy" / "f.txt").stat().st_mode & 0o777 == 0o640
    sed = subprocess.run(["sed", "-i", "s/one/two/", str(mounted.mnt / "copy" / "f.txt")],
                         capture_output=True, text=True, check=False)
    assert sed.returncode == 0 and sed.stderr == "", sed.stderr
    assert (mounted.mnt / "copy" / "f.txt").read_text() == "two\n"


def test_control_client_leaving_early_keeps_the_mount(mount_session: MountFactory) -> None:
    """Issue 10, item 3: a client that closes before the reply killed the daemon."""
    import socket

    mounted = mount_session()
    session = open_session(mounted.name, mounted.home)
    for _ in range(5):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        state = session.mount_state()
        assert state is not None
        s.connect(state.control)
        s.sendall(b'{"op": "sync"}\n')
        s.close()
    reply = request(session, {"op": "ping"})
    assert reply is not None and reply["ok"]
    (mounted.mnt / "alive").write_text("yes")
    assert (mounted.mnt / "alive").read_text() == "yes"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_long_haul_mixed_operations_stay_bounded(mount_session: MountFactory,
                                                 tmp_path: Path) -> None:
    """100,000 create / write / read / rename / unlink operations on one
    mount, over a lower with files of its own: the daemon's fd count stays
    under the cache bound and its RSS does not grow with the work done."""
    import random

    lower = tmp_path / "project"
    (lower / "src").mkdir(parents=True)
    for i in range(200):
        (lower / "src" / f"l{i}.txt").write_text(f"lower {i}\n")
    mounted = mount_session(lower)
    pid = daemon_pid(mounted)
    rng = random.Random(9)
    work = mounted.mnt / "work"
    work.mkdir()
    live: list[Path] = []
    fds_seen: list[int] = []
    rss_seen: list[int] = []
    ops = 0
    n = 0
    while ops < 100_000:
        kind = rng.random()
        if kind < 0.3 or not live:
            p = work / f"n{n}"
            n += 1
            p.write_bytes(b"x" * rng.randrange(0, 4096))
            live.append(p)
        elif kind < 0.45:
            p = rng.choice(live)
            with open(p, "ab") as f:
                f.write(b"more")
        elif kind < 0.65:
            rng.choice(live).read_bytes()
        elif kind < 0.75:
            i = rng.randrange(len(live))
            new = work / f"n{n}"
            n += 1
            live[i].rename(new)  # an editor's save: temp file renamed over
            live[i] = new
        elif kind < 0.8:
            (lower_file := mounted.mnt / "src" / f"l{rng.randrange(200)}.txt").read_bytes()
            if rng.random() < 0.1:
                with open(lower_file, "ab") as f:  # copy-up
                    f.write(b"!")
        else:
            live.pop(rng.randrange(len(live))).unlink()
        ops += 1
        if ops % 10_000 == 0:
            fds_seen.append(open_fds(pid))
            rss_seen.append(rss_kib(pid))
    # The fd cache, 64 more, and two for each io_uring queue thread (its ring
    # and its eventfd: a fixed number, at most 2 x 32 or 2 per CPU).
    assert max(fds_seen) <= FD_CACHE + 64 + 2 * len(ring_threads(pid)), fds_seen
    # After warm-up (the first 20,000 ops fill the inode table and fd cache)
    # memory stays flat: no per-operation growth.
    assert max(rss_seen[2:]) <= rss_seen[1] * 1.5 + 16 * 1024, rss_seen
    assert sorted(p.name for p in work.iterdir()) == sorted(p.name for p in live)


def _made_with_a_held_directorys_number(root: Path, make: Callable[[Path], object]
                                        ) -> tuple[Path, int]:
    """A directory made, held open, removed; then `make(path)` beside it,
    until the new entry gets the removed directory's inode number: (the new
    entry, the fd still holding the removed directory). On a file system
    of the test's own ext4 gives the number again at the first try; a few
    more are allowed."""
    root.mkdir()
    for attempt in range(20):
        old = root / f"old{attempt}"
        old.mkdir()
        number = old.stat().st_ino
        holder = os.open(old, os.O_RDONLY | os.O_DIRECTORY)
        try:
            old.rmdir()
            new = root / f"new{attempt}"
            make(new)
            if new.stat().st_ino == number:
                return new, holder
        except BaseException:
            os.close(holder)
            raise
        os.close(holder)
    raise AssertionError("the upper file system never gave a freed inode number again")


def test_entries_given_a_removed_directorys_inode_number_are_new_inodes(tmp_path: Path) -> None:
    """ext4 (the upper layer here) gives a freed inode number again at once,
    so a new upper entry can get the overlay inode number of a directory
    removed a moment ago that a process still holds open. Before: a new
    file's node replaced the directory's and lost the lookups the kernel
    still held, whose FORGET then dropped the file's node while the kernel
    used it (ESTALE on its next request: a remover loop beside a directory
    walker, ~1 run in 5); a new directory was taken by the kernel for the
    removed one (creating in it: ENOENT). Now a new entry of a number still
    known is a new generation, and the old lookups are kept for their FORGET.

    The session's home (its upper) is an ext4 of the test's own: on the
    shared disk, other tests' processes took the freed number first, and
    under a parallel run a minute of tries was sometimes not enough."""
    require_fuse()
    lower, home, mnt = tmp_path / "lower", tmp_path / "home", tmp_path / "mnt"
    lower.mkdir()
    mnt.mkdir()
    with loop_ext4(tmp_path / "home.img", home):
        s = MountedSession("numbers", home, lower, mnt)
        s.mount()
        try:
            f, holder = _made_with_a_held_directorys_number(s.mnt / "a",
                                                            lambda p: p.write_text("x"))
            os.close(holder)  # the kernel forgets the directory
            os.utime(f, (1, 1))  # requests for the file that reach the daemon
            with open(f, "a") as out:
                out.write("y")
            assert f.read_text() == "xy"

            new, holder = _made_with_a_held_directorys_number(s.mnt / "b", Path.mkdir)
            try:
                (new / "g").write_text("z")
            finally:
                os.close(holder)
            assert (new / "g").read_text() == "z"
            assert os.listdir(new) == ["g"]
        finally:
            s.umount()


def test_removing_one_of_several_hard_links_pins_no_fd(mount_session: MountFactory) -> None:
    """`cp -al tree copy && rm -rf copy` (a build's hard-linked staging
    tree, `git worktree`-like snapshots): each unlink of a file the kernel
    held pinned an fd on it, as if its last name went, and the kernel never
    forgot those inodes while the other names were cached: 1,400 fds for a
    small Python tree, unbounded for a big one. A file keeps no pinned fd
    while another name of it is known; its last name still pins one."""
    mounted = mount_session()
    pid = daemon_pid(mounted)
    tree, copy = mounted.mnt / "tree", mounted.mnt / "copy"
    for sub in ("a", "b"):
        (tree / sub).mkdir(parents=True)
        (copy / sub).mkdir(parents=True)
    names = [f"{sub}/f{i}" for sub in ("a", "b") for i in range(FD_CACHE // 2 + 300)]
    for name in names:
        (tree / name).write_text(name)
        os.link(tree / name, copy / name)
    before = open_fds(pid)
    subprocess.run(["rm", "-rf", str(copy)], check=True)
    stats = mounted.control("stats")["fds"]
    assert stats["pinned"] == 0, stats
    assert open_fds(pid) <= before + 16
    for name in names:  # every file still whole through its other name
        assert (tree / name).read_text() == name
        assert os.stat(tree / name).st_nlink == 1
    with open(tree / names[0], "r+") as held:  # and a last name still pins
        (tree / names[0]).unlink()
        held.write("rewritten")
        held.seek(0)
        assert held.read() == "rewritten"
