"""LOOKUPs answered in C (shim part 12, fuse/lookup_table.py), through a real
mount: in directories only the lower layer shows, the shim's answer is the
lower entry the daemon's own lookup would give; a directory stops being
answered there the moment it gets an upper directory; and the daemon's
inode table counts every lookup the shim answered (nodes come and go with
the kernel's FORGETs, nothing leaks, nothing goes stale)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.overlay.files import DEFAULT_CAPACITY
from tests.support.mounts import MountedSession

Mount = Callable[..., MountedSession]


def lower_tree(root: Path) -> list[str]:
    """A few levels of files, symlinks and a hard-linked pair; the paths."""
    paths = []
    for d in ("proj/src/deep", "proj/docs"):
        (root / d).mkdir(parents=True)
        for i in range(12):
            (root / d / f"f{i}.txt").write_text(f"{d} {i}\n" * (i + 1))
            paths.append(f"{d}/f{i}.txt")
        (root / d / "ln").symlink_to("f1.txt")
        paths += [d, f"{d}/ln"]
    os.link(root / "proj/src/deep/f0.txt", root / "proj/docs/hard")
    paths.append("proj/docs/hard")
    return paths


def shim_lookups(s: MountedSession) -> dict[str, int]:
    stats = s.control("stats").get("shim_lookups")
    assert stats is not None, "LOOKUPs not answered in C: is the FUSE shim (part 12) loaded?"
    return dict(stats)


def forget_all(s: MountedSession) -> None:
    """Make the kernel drop this mount's dentries (and so FORGET its unused
    inodes): the daemon's own invalidate, which commit uses; per mount, where
    drop_caches would disturb every other test running meanwhile."""
    s.control("invalidate")


def settles(value: Callable[[], int], ok: Callable[[int], bool], timeout: float = 20.0) -> int:
    """`value()` once `ok` says so: the kernel sends FORGETs after the
    invalidation returns, and the daemon reads them in its own time."""
    deadline = time.monotonic() + timeout
    seen = value()
    while not ok(seen) and time.monotonic() < deadline:
        os.sched_yield()
        seen = value()
    return seen


def test_lookups_answered_in_c_are_the_lower_entries(tmp_path: Path,
                                                     mount_session: Mount) -> None:
    lower = tmp_path / "lower"
    paths = lower_tree(lower)
    s = mount_session(lower, None, "--lower-ttl", "0")
    for rel in paths:
        seen, real = os.lstat(s.mnt / rel), os.lstat(lower / rel)
        assert (seen.st_ino, seen.st_mode, seen.st_size, seen.st_mtime_ns, seen.st_nlink,
                seen.st_uid) == (real.st_ino, real.st_mode, real.st_size, real.st_mtime_ns,
                                 real.st_nlink, real.st_uid), rel
        if stat.S_ISREG(real.st_mode):
            assert (s.mnt / rel).read_bytes() == (lower / rel).read_bytes(), rel
    with pytest.raises(FileNotFoundError):
        os.lstat(s.mnt / "proj/src/deep/missing")
    counts = shim_lookups(s)
    # Everything below proj/ but the hard link (the lower root's own children
    # always go to the daemon: commit staging names are hidden there).
    assert counts["entries"] >= len(paths) - 2, counts
    assert counts["negative"] >= 1 and counts["declined"] >= 1, counts
    hard, first = os.lstat(s.mnt / "proj/docs/hard"), os.lstat(s.mnt / "proj/src/deep/f0.txt")
    assert hard.st_ino == first.st_ino


def test_a_directory_that_gets_an_upper_directory_is_answered_by_the_daemon(
        tmp_path: Path, mount_session: Mount) -> None:
    """Whiteouts and new entries live in the upper directory, which the
    shim never reads: once a directory has one, its lookups must go to the
    daemon. The directory is held open (so the kernel keeps its inode and
    the daemon its node)."""
    lower = tmp_path / "lower"
    lower_tree(lower)
    s = mount_session(lower)
    deep = s.mnt / "proj/src/deep"
    held = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.lstat("f3.txt", dir_fd=held).st_size > 0  # answered in C
        answered = shim_lookups(s)["entries"]
        os.unlink(deep / "f3.txt")  # deep gets an upper directory and a whiteout
        (deep / "new").write_text("new\n")
        with pytest.raises(FileNotFoundError):
            os.lstat("f3.txt", dir_fd=held)
        assert os.lstat("new", dir_fd=held).st_size == 4
        assert os.lstat("f4.txt", dir_fd=held).st_size > 0  # never looked up: a LOOKUP
        assert shim_lookups(s)["entries"] == answered, "the shim answered in a merged directory"
    finally:
        os.close(held)
    assert sorted(os.listdir(deep)) == sorted(
        {f"f{i}.txt" for i in range(12)} - {"f3.txt"} | {"ln", "new"})
    # A directory moved away keeps its children; its old name is gone.
    os.rename(s.mnt / "proj/docs", s.mnt / "proj/manual")
    assert (s.mnt / "proj/manual/f2.txt").read_text().startswith("proj/docs 2")
    with pytest.raises(FileNotFoundError):
        os.lstat(s.mnt / "proj/docs/f2.txt")
    assert (lower / "proj/src/deep/f3.txt").exists()  # the lower never changes


def test_files_found_in_c_are_written_and_forgotten_like_any_other(
        tmp_path: Path, mount_session: Mount) -> None:
    """The daemon learns of the shim's entries before any request of its own:
    a write (copy-up) needs the node's path; and the kernel's FORGETs drop
    exactly the nodes it looked up, however many LOOKUPs the shim answered."""
    lower = tmp_path / "lower"
    (lower / "d" / "e").mkdir(parents=True)
    for i in range(2000):
        (lower / "d" / "e" / f"n{i}").write_text(str(i))
    s = mount_session(lower, None, "--lower-ttl", "0")
    e = s.mnt / "d" / "e"
    for _ in range(2):  # a zero TTL: each round LOOKUPs every name again
        for i in range(2000):
            os.lstat(e / f"n{i}")
    with open(e / "n7", "a") as f:  # copy-up of a node only the shim saw
        f.write("+")
    assert (s.upper / "d" / "e" / "n7").read_text() == "7+"
    assert (lower / "d" / "e" / "n7").read_text() == "7"
    forget_all(s)
    after = settles(lambda: int(s.control("stats")["nodes"]), lambda n: n < 50)
    assert after < 50, f"{after} nodes left after the kernel forgot them (lookups overcounted)"
    for i in (0, 7, 1999):
        assert (e / f"n{i}").read_text() == (f"{i}+" if i == 7 else str(i))
    counts = shim_lookups(s)
    assert counts["entries"] >= 4000 and counts["absorbed"] == counts["entries"], counts


def test_counting_a_batch_is_counting_each_lookup() -> None:
    """The absorb path (`add_lower_lookups`) leaves the table exactly as
    `intern` + `add_lookup` would for the same lookups."""
    from astrid_fs.overlay.inodes import ROOT_INO, InodeTable, Node

    def table() -> InodeTable:
        t = InodeTable(Node(ROOT_INO, True, b"", True))
        t.intern(10, True, b"src", False, ROOT_INO, b"src")
        t.intern(11, False, b"src/a", False, 10, b"a")  # known already, once
        return t

    found = [(10, 11, False, b"a"), (10, 12, True, b"d"), (12, 13, False, b"x"),
             (10, 11, False, b"b"), (12, 13, False, b"x"), (99, 14, False, b"orphan")]
    one_by_one, batch = table(), table()
    for parent, ino, is_dir, name in found:
        if parent in one_by_one:
            lower = one_by_one.get(parent).lower
            one_by_one.add_lookup(one_by_one.intern(ino, is_dir, (lower or b"") + b"/" + name,
                                                    False, parent, name))
    assert batch.add_lower_lookups(found) == len(found) - 1
    assert [(n.ino, n.is_dir, n.lower, n.in_upper, n.links, n.lookups)
            for n in batch.nodes()] == \
        [(n.ino, n.is_dir, n.lower, n.in_upper, n.links, n.lookups)
         for n in one_by_one.nodes()]
    assert batch.path_of(batch.get(13)) == b"src/d/x"


def lower_fds(pid: int, under: Path) -> int:
    """How many of the daemon's fds are open on files under `under`."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(under) + "/")
    return count


def test_first_reads_of_files_found_in_c_are_read_in_c_and_follow_a_copy_up(
        tmp_path: Path, mount_session: Mount) -> None:
    """A file the shim looked up is also read by the shim, from an fd it
    opens itself: bounded in number, closed when the kernel forgets the
    file, and never read again once the file is copied up."""
    lower = tmp_path / "lower"
    (lower / "d" / "e").mkdir(parents=True)
    for i in range(301):  # more than the shim keeps open
        (lower / "d" / "e" / f"f{i}").write_bytes(b"%d " % i * (i + 1))
    (lower / "d" / "g").mkdir()  # (a copy-up in e gives e an upper directory)
    (lower / "d" / "g" / "f301").write_bytes(b"301 " * 302)
    s = mount_session(lower)
    pid = s.control("ping")["pid"]
    e = s.mnt / "d" / "e"
    for i in range(300):
        assert (e / f"f{i}").read_bytes() == b"%d " % i * (i + 1)
    assert shim_lookups(s)["files_opened"] >= 300
    assert lower_fds(pid, lower) <= 256
    # Files not read yet (nothing cached: their first READ reaches the shim).
    for name, first in (("e/f300", b"300 "), ("g/f301", b"301 ")):
        with open(s.mnt / "d" / name, "rb") as reader:  # opened and read before the copy-up
            opened = shim_lookups(s)["files_opened"]
            assert reader.read(4) == first
            assert shim_lookups(s)["files_opened"] == opened + 1, name  # read by the shim
            if name == "e/f300":  # a WRITE: the daemon's fd replaces the shim's
                with open(s.mnt / "d" / name, "ab") as writer:
                    writer.write(b"+")
                want = b"300 " * 301 + b"+"
            else:  # a copy-up by SETATTR alone (the daemon opens no fd; the
                # kernel drops the pages, so the read below is a READ)
                os.truncate(s.mnt / "d" / name, 0)
                os.truncate(s.mnt / "d" / name, 5)
                want = bytes(5)
            assert os.pread(reader.fileno(), 2000, 0) == want, name
    forget_all(s)  # FORGETs: the shim closes its fds
    assert settles(lambda: lower_fds(pid, lower), lambda n: n == 0) == 0
    assert (lower / "d" / "e" / "f300").read_bytes() == b"300 " * 301
    assert (lower / "d" / "g" / "f301").read_bytes() == b"301 " * 302


def requests(s: MountedSession, op: str) -> int:
    return int(s.control("stats")["requests"].get(op, 0))


def test_getattrs_after_reads_are_answered_in_c_from_the_lower(
        tmp_path: Path, mount_session: Mount) -> None:
    """A READ makes the kernel drop a file's cached atime, so the next stat
    of it is a GETATTR: for every file of a `grep -r` run again. For what
    part 12 found, the shim answers it with the lower entry, read afresh (a
    project edit shows), as the daemon would."""
    lower = tmp_path / "lower"
    (lower / "p" / "q").mkdir(parents=True)
    for i in range(200):
        (lower / "p" / "q" / f"f{i}").write_bytes(b"%d\n" % i)
    (lower / "p" / "q" / "g").write_bytes(b"g\n")
    s = mount_session(lower)
    q = s.mnt / "p" / "q"
    for i in range(200):
        assert (q / f"f{i}").read_bytes() == b"%d\n" % i
    before, in_python = shim_lookups(s)["getattrs"], requests(s, "getattr")
    for i in range(200):
        seen, real = os.stat(q / f"f{i}"), os.stat(lower / "p" / "q" / f"f{i}")
        assert (seen.st_mode, seen.st_size, seen.st_mtime_ns, seen.st_nlink, seen.st_uid,
                seen.st_gid) == (real.st_mode, real.st_size, real.st_mtime_ns, real.st_nlink,
                                 real.st_uid, real.st_gid)
    assert shim_lookups(s)["getattrs"] - before >= 190
    assert requests(s, "getattr") - in_python <= 10
    # The project changes a file the kernel knows but has not read: its
    # first READ, then the GETATTR after it, show the change.
    assert os.stat(q / "g").st_size == 2
    os.utime(lower / "p" / "q" / "g", ns=(5_000_000_000, 6_000_000_000))
    assert (q / "g").read_bytes() == b"g\n"
    assert os.stat(q / "g").st_mtime_ns == 6_000_000_000


def test_a_removed_open_file_or_directory_is_the_daemons_again(
        tmp_path: Path, mount_session: Mount) -> None:
    """Removed through the mount but still open: nlink 0, as on a plain file
    system, though the lower entry (which the shim would lstat) is there."""
    lower = tmp_path / "lower"
    (lower / "p" / "q" / "sub").mkdir(parents=True)
    (lower / "p" / "q" / "f").write_bytes(b"data\n")
    s = mount_session(lower)
    q = s.mnt / "p" / "q"
    fd = os.open(q / "f", os.O_RDONLY)
    dfd = os.open(q / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.read(fd, 5) == b"data\n"
        os.unlink(q / "f")
        os.rmdir(q / "sub")
        os.pread(fd, 5, 0)  # a READ: the kernel asks for the attributes again
        assert os.fstat(fd).st_nlink == 0
        assert os.fstat(dfd).st_nlink == 0
    finally:
        os.close(fd)
        os.close(dfd)
    assert (lower / "p" / "q" / "f").read_bytes() == b"data\n"
    assert (lower / "p" / "q" / "sub").is_dir()


def test_files_listed_in_full_are_read_in_c(tmp_path: Path, mount_session: Mount) -> None:
    """A big directory is listed in full (READDIRPLUS with attributes: the
    kernel then needs no LOOKUP); its lower files are still read by the shim."""
    lower = tmp_path / "lower"
    (lower / "d" / "big").mkdir(parents=True)
    for i in range(400):  # more than a name-only listing may hold
        (lower / "d" / "big" / f"f{i}").write_bytes(b"%d\n" % i)
    s = mount_session(lower)
    big = s.mnt / "d" / "big"
    assert len(os.listdir(big)) == 400
    before = shim_lookups(s)
    for i in range(400):
        assert (big / f"f{i}").read_bytes() == b"%d\n" % i
    after = shim_lookups(s)
    assert after["entries"] == before["entries"], "the listing should have spared the lookups"
    assert after["files_opened"] - before["files_opened"] == 400, after
    with open(big / "f1", "ab") as f:  # and a copy-up still takes a file back
        f.write(b"+")
    assert (big / "f1").read_bytes() == b"1\n+"
    assert (lower / "d" / "big" / "f1").read_bytes() == b"1\n"


def test_listings_answered_in_c_agree_with_the_lower(tmp_path: Path,
                                                     mount_session: Mount) -> None:
    """A reader that stats what it lists (find -printf, ls -l) gets full
    listings; the shim answers those in lower-only directories: the same
    names, inode numbers and attributes as the lower, dots included; a
    directory changed through the mount meanwhile is listed by the daemon."""
    lower = tmp_path / "lower"
    dirs = [f"t/d{i:02}" for i in range(30)]
    for d in dirs:
        (lower / d / "sub").mkdir(parents=True)
        for j in range(20):
            (lower / d / f"f{j}").write_text("x" * j)
        (lower / d / "ln").symlink_to("f1")
    s = mount_session(lower)
    (s.mnt / "t/d20/f3").write_text("changed")  # d20 gets an upper directory
    for d in dirs:
        for entry in os.scandir(s.mnt / d):
            st = entry.stat(follow_symlinks=False)
            real = os.lstat(lower / d / entry.name)
            want_size = 7 if (d, entry.name) == ("t/d20", "f3") else real.st_size
            assert (entry.inode(), st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns
                    if entry.name != "f3" or d != "t/d20" else real.st_mtime_ns) == \
                (real.st_ino, real.st_ino, real.st_mode, want_size, real.st_mtime_ns), \
                (d, entry.name)
        assert sorted(os.listdir(s.mnt / d)) == sorted(os.listdir(lower / d))
    counts = shim_lookups(s)
    assert counts["listings"] >= 20, counts
    out = subprocess.run(["ls", "-ai", str(s.mnt / "t/d29")], check=True, text=True,
                         capture_output=True).stdout.split()
    listed = dict(zip(out[1::2], (int(n) for n in out[0::2]), strict=True))
    assert listed["."] == os.stat(s.mnt / "t/d29").st_ino
    assert listed[".."] == os.stat(s.mnt / "t").st_ino
    assert listed["f5"] == os.lstat(lower / "t/d29/f5").st_ino


def test_a_stat_walk_of_many_directories_is_listed_in_c(tmp_path: Path,
                                                       mount_session: Mount) -> None:
    """`find -printf` over a tree of more directories than one run of full
    listings (name_only.py, 128): the shim lists them, the daemon only the
    few name-only probes between runs. Before the shim's count was shared
    (version 22), each run the shim listed was followed by as many full
    listings in Python: twice the daemon's listings this test allows."""
    lower = tmp_path / "lower"
    dirs = [f"t/d{i:03}" for i in range(300)]
    for d in dirs:
        (lower / d).mkdir(parents=True)
        for j in range(6):
            (lower / d / f"f{j}").write_text("z" * j)
    s = mount_session(lower)
    before, asked = shim_lookups(s), s.control("stats")["requests"].get("readdir", 0)
    out = subprocess.run(["find", str(s.mnt / "t"), "-printf", "%P %s %i\n"], check=True,
                         text=True, capture_output=True).stdout.splitlines()
    want = subprocess.run(["find", str(lower / "t"), "-printf", "%P %s %i\n"], check=True,
                          text=True, capture_output=True).stdout.splitlines()
    assert sorted(out) == sorted(want)
    in_python = s.control("stats")["requests"].get("readdir", 0) - asked
    in_c = shim_lookups(s)["listings"] - before["listings"]
    assert in_c >= 2 * 260, (in_c, in_python)  # (offset 0 and the empty end)
    assert in_python <= 40, (in_c, in_python)


def test_files_the_kernel_holds_are_listed_by_name_only(tmp_path: Path,
                                                       mount_session: Mount) -> None:
    """git status looks up every tracked file (its index refresh), then lists
    every directory (the untracked-file scan). A full listing (READDIRPLUS
    with attributes) of files the kernel holds already gives it nothing new
    and costs the daemon a lookup to count each: the shim sends those by name
    (and inode number and type) only. What a reader sees is the same; a file
    the kernel forgot is listed in full again."""
    lower = tmp_path / "lower"
    dirs = [f"w/d{i}" for i in range(6)]
    for d in [*dirs, "w/probe"]:
        (lower / d).mkdir(parents=True)
        for j in range(30):
            (lower / d / f"f{j}").write_text("y" * j)
        (lower / d / "sub").mkdir()
    s = mount_session(lower)
    for d in dirs:  # the index refresh: one LOOKUP each, answered in C
        for j in range(30):
            assert os.stat(s.mnt / d / f"f{j}").st_size == j
    # A reader that stats what it lists turns full listings on (name_only.py).
    for entry in os.scandir(s.mnt / "w/probe"):
        entry.stat(follow_symlinks=False)
    before = shim_lookups(s)
    for d in dirs:
        listed = {e.name: (e.inode(), e.is_file(), e.is_dir()) for e in os.scandir(s.mnt / d)}
        assert listed == {e.name: (e.inode(), e.is_file(), e.is_dir())
                          for e in os.scandir(lower / d)}, d
        for j in range(30):
            seen, real = os.stat(s.mnt / d / f"f{j}"), os.stat(lower / d / f"f{j}")
            assert (seen.st_ino, seen.st_size, seen.st_mtime_ns) == \
                (real.st_ino, real.st_size, real.st_mtime_ns)
    after = shim_lookups(s)
    assert after["listings"] - before["listings"] >= len(dirs), (before, after)
    assert after["held"] - before["held"] == 30 * len(dirs), (before, after)
    # Only the subdirectories were sent in full (one counted lookup each).
    assert after["absorbed"] - before["absorbed"] <= 2 * len(dirs), (before, after)
    forget_all(s)
    settles(lambda: s.control("stats")["nodes"], lambda n: n < 20)
    before = shim_lookups(s)
    for entry in os.scandir(s.mnt / "w/probe"):  # full listings again
        entry.stat(follow_symlinks=False)
    assert len(os.listdir(s.mnt / dirs[0])) == 31
    after = shim_lookups(s)
    assert after["held"] == before["held"], "forgotten files must come with attributes"


def test_tens_of_thousands_of_files_walked_read_and_forgotten_with_bounded_fds(
        tmp_path: Path, mount_session: Mount) -> None:
    """What an agent's build does to a big project: walk it (names, then
    attributes), grep it, read it; the daemon's fds stay bounded (its own
    1,024 + the shim's 256), every answer equals the lower, and once the
    kernel lets go the daemon holds almost nothing."""
    lower = tmp_path / "big"
    want: dict[str, bytes] = {}
    for d in range(120):
        sub = lower / f"pkg{d:03}" / "src"
        sub.mkdir(parents=True)
        for f in range(250):
            body = b"pkg %d file %d\n" % (d, f)
            (sub / f"m{f:03}.py").write_bytes(body)
            want[f"pkg{d:03}/src/m{f:03}.py"] = body
    s = mount_session(lower)
    pid = s.control("ping")["pid"]
    names = {str(p.relative_to(s.mnt)) for p in s.mnt.rglob("*.py")}
    assert names == set(want)
    for rel in sorted(want)[::7]:  # attributes of a sample, through the mount
        assert os.lstat(s.mnt / rel).st_ino == os.lstat(lower / rel).st_ino
    found = subprocess.run(["grep", "-rl", "file 249", str(s.mnt)], check=True,
                           capture_output=True, text=True).stdout.split()
    assert len(found) == 120
    for rel, body in want.items():
        assert (s.mnt / rel).read_bytes() == body
    daemon_fds = len(os.listdir(f"/proc/{pid}/fd"))
    assert daemon_fds < DEFAULT_CAPACITY + 256 + 64, daemon_fds
    counts = shim_lookups(s)
    assert counts["files_opened"] > 0 and counts["entries"] + counts["listings"] > 0, counts
    forget_all(s)
    left = settles(lambda: int(s.control("stats")["nodes"]), lambda n: n < 50)
    assert left < 50, left
    assert settles(lambda: lower_fds(pid, lower), lambda n: n == 0) == 0


def test_absorbs_reuse_one_buffer_grown_in_powers_of_two() -> None:
    # ctypes makes (and keeps for good) an array type per new length: a
    # buffer per absorb of each pending size cost the trio thread ~8 % of a
    # cold `git status` and grew the daemon without bound.
    from types import SimpleNamespace

    from astrid_fs.fuse.lookup_table import ShimLookups

    holder = SimpleNamespace(_buf=None)
    lengths = []
    for size in (10, 4096, 4097, 5000, 70_000, 3, 65_536):
        buf = ShimLookups._buffer(holder, size)  # type: ignore[arg-type]
        assert len(buf) >= size
        lengths.append(len(buf))
    assert lengths == [4096, 4096, 8192, 8192, 131072, 131072, 131072]


def _upper_dir_view(upper_dir: Path, merged: bool) -> tuple[int, ...]:
    """What the daemon answers for a directory with an upper directory:
    the upper's attributes, nlink 1 when it merges a lower one."""
    st = os.lstat(upper_dir)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            1 if merged else st.st_nlink)


def _seen(path: Path) -> tuple[int, ...]:
    st = os.lstat(path)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            st.st_nlink)


def test_getattrs_of_directories_changed_meanwhile_are_answered_in_c(
        tmp_path: Path, mount_session: Mount) -> None:
    """Each change in a directory makes the kernel ask its attributes again
    (a permission check): `rm -rf` of a project directory and `cp -a` into
    the session sent a GETATTR to Python per file, as many as the UNLINKs
    and CREATEs. Once the daemon answered one, the shim answers the rest
    from the upper directory (shim part 19), with what the daemon would say."""
    lower = tmp_path / "lower"
    (lower / "gone" / "deep").mkdir(parents=True)
    (lower / "kept").mkdir()
    for i in range(400):
        (lower / "gone" / f"f{i}").write_text("x")
        (lower / "kept" / f"k{i}").write_text("y")
    s = mount_session(lower)
    kept_ino = os.stat(s.mnt / "kept").st_ino
    before = s.control("stats")["requests"].get("getattr", 0)
    in_c = shim_lookups(s)["getattrs"]
    for i in range(300):
        (s.mnt / "kept" / f"k{i}").unlink()
    made = s.mnt / "made"
    made.mkdir()
    for i in range(300):
        (made / f"n{i}").write_text("n")
    subprocess.run(["rm", "-rf", str(s.mnt / "gone")], check=True)
    in_python = s.control("stats")["requests"].get("getattr", 0) - before
    assert in_python <= 12, in_python
    assert shim_lookups(s)["getattrs"] - in_c >= 800
    # What the shim answers is what the daemon would: the upper directory's
    # attributes under the overlay inode; nlink 1 for a merged directory.
    assert os.stat(s.mnt / "kept").st_ino == kept_ino
    assert _seen(s.mnt / "kept") == _upper_dir_view(s.upper / "kept", merged=True)
    assert _seen(made) == _upper_dir_view(s.upper / "made", merged=False)
    os.chmod(made, 0o711)  # a SETATTR: the next answer is the new mode
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o711
    assert _seen(made) == _upper_dir_view(s.upper / "made", merged=False)
    assert sorted(os.listdir(s.mnt)) == ["kept", "made"]


def test_a_directory_answered_in_c_that_moves_or_is_replaced_goes_to_the_daemon(
        tmp_path: Path, mount_session: Mount) -> None:
    """The shim names a directory by its upper path and the upper inode
    found there: a directory renamed (it, or one above it), or removed and
    made again under its name, is answered by the daemon again, never with
    another directory's attributes."""
    lower = tmp_path / "lower"
    (lower / "a" / "b").mkdir(parents=True)
    (lower / "a" / "b" / "f").write_text("f")
    s = mount_session(lower, None, "--lower-ttl", "0")
    b = s.mnt / "a" / "b"
    (b / "new").write_text("n")  # b and a get upper directories
    os.stat(b)
    os.stat(b)  # (the second is the shim's)
    (s.mnt / "a").rename(s.mnt / "a2")  # a redirect: b's upper path moves
    moved = s.mnt / "a2" / "b"
    (moved / "more").write_text("m")
    assert _seen(moved) == _upper_dir_view(s.upper / "a2" / "b", merged=True)
    assert sorted(os.listdir(moved)) == ["f", "more", "new"]
    d = s.mnt / "d"
    d.mkdir(0o755)
    (d / "x").write_text("x")
    old = os.stat(d)
    held = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (d / "x").unlink()
        d.rmdir()
        d.mkdir(0o700)  # same name, maybe the same upper inode number
        (d / "y").write_text("y")
        now = os.stat(d)
        assert stat.S_IMODE(now.st_mode) == 0o700
        assert _seen(d) == _upper_dir_view(s.upper / "d", merged=False)
        try:  # the removed one: never the new one's attributes
            gone = os.fstat(held)
        except OSError as e:
            # ext4 gave the new directory or its file the removed one's inode
            # number, so its overlay number too: a new FUSE generation, and
            # the kernel made the old inode bad (fuse_iget). docs/astrid-fs.md.
            assert e.errno == errno.EIO
            assert old.st_ino in (now.st_ino, os.stat(d / "y").st_ino)
        else:
            assert stat.S_IMODE(gone.st_mode) == stat.S_IMODE(old.st_mode)
            assert gone.st_nlink == 0
    finally:
        os.close(held)


def test_names_a_changed_directory_does_not_show_are_answered_in_c(
        tmp_path: Path, mount_session: Mount) -> None:
    """`cp -a`, `tar x` and every compiler probe look a name up before they
    create it: in a directory with an upper directory each such LOOKUP went
    to Python. Once the daemon has answered a GETATTR of the directory (part
    19), the shim answers the names it does not show (shim version 31):
    none in the upper directory, or a whiteout there, and none in the lower
    one it merges. What the shim says is what the daemon would: a name the
    project gains meanwhile, one the session made, one a whiteout hides and
    one made after a miss."""
    lower = tmp_path / "lower"
    (lower / "proj").mkdir(parents=True)
    for i in range(10):
        (lower / "proj" / f"l{i}").write_text(f"lower {i}")
    s = mount_session(lower)
    proj = s.mnt / "proj"
    (proj / "mine").write_text("mine")  # proj gets an upper directory
    (proj / "l0").unlink()  # and a whiteout
    own = s.mnt / "own"
    own.mkdir()
    (own / "o").write_text("o")
    os.stat(proj)
    os.stat(own)  # the daemon answered a GETATTR of each: both named to the shim
    before = requests(s, "lookup")
    negative = shim_lookups(s)["negative"]
    for i in range(300):  # (each name once: the kernel keeps a miss a while)
        assert not os.path.lexists(proj / f"absent{i}")
        assert not os.path.lexists(own / f"absent{i}")
    assert not os.path.lexists(proj / "l0")
    assert requests(s, "lookup") - before <= 12
    assert shim_lookups(s)["negative"] - negative >= 590
    # What exists is found (the shim declines: the daemon answers).
    assert (proj / "mine").read_text() == "mine"
    assert (proj / "l1").read_text() == "lower 1"
    assert (own / "o").read_text() == "o"
    (lower / "proj" / "late").write_text("late")  # the user edits the project
    assert (proj / "late").read_text() == "late"
    # Names made after a miss, over a whiteout too.
    (proj / "absent0").write_text("a0")
    (proj / "l0").write_text("again")
    (own / "absent0").write_text("o0")
    assert (proj / "absent0").read_text() == "a0"
    assert (proj / "l0").read_text() == "again"
    assert (own / "absent0").read_text() == "o0"
    assert sorted(os.listdir(proj)) == sorted(
        ["absent0", "late", "mine"] + [f"l{i}" for i in range(10)])
    # Removed again: a whiteout over the lower name, none over the own one.
    (proj / "l1").unlink()
    (own / "absent0").unlink()
    assert not os.path.lexists(proj / "l1")
    assert not os.path.lexists(own / "absent0")
    assert sorted(os.listdir(own)) == ["o"]
