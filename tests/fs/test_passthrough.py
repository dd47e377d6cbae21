"""FUSE passthrough (fuse/passthrough.py, shim part 6): upper files served by
the kernel from the upper file itself, overlay semantics kept.

The rule table is tested without a mount; the rest mounts with
`--passthrough`. Whether the kernel served a file is read from the daemon
(its data-path counters, and /proc/PID/io: bytes the kernel moved for us
never pass through the daemon's read/write calls)."""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from astrid_fs.fuse.config import requested
from astrid_fs.fuse.passthrough import Choice, Live, Passthrough, choose
from tests.fs.test_write_table import shim_counts
from tests.support.mounts import MountedSession, missing_part

MountFactory = Callable[..., MountedSession]
MIB = 1 << 20


# ---- the rules, no mount ------------------------------------------------------

@pytest.mark.parametrize(("local", "in_upper", "writable", "live", "expected"), [
    # an upper file, or any writable open (copied up first): passthrough
    (True, True, False, Live(), Choice.PASSTHROUGH),
    (True, False, True, Live(), Choice.PASSTHROUGH),
    # a lower file read: the daemon path (a reader must follow a copy-up)
    (True, False, False, Live(), Choice.DAEMON),
    # a remote file: the daemon path
    (False, False, False, Live(), Choice.DAEMON),
    (False, True, True, Live(), Choice.DAEMON),
    # the kernel's rule: one backing per open inode, no mixing with cached I/O
    (True, True, True, Live(mode=2, backing_id=7, pt_opens=1), Choice.REUSE),
    (True, False, True, Live(mode=1, daemon_opens=1), Choice.DAEMON),
    (True, True, False, Live(mode=1, daemon_opens=2), Choice.DAEMON),
    # idle entries decide nothing
    (True, True, False, Live(mode=2, backing_id=7), Choice.PASSTHROUGH),
])
def test_choose(local: bool, in_upper: bool, writable: bool, live: Live,
                expected: Choice) -> None:
    assert choose(local=local, in_upper=in_upper, writable=writable, live=live) is expected


def test_without_root_the_mount_keeps_the_daemon_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    pt, reason = Passthrough.enable(cast(Any, None), cast(Any, None))
    assert pt is None
    assert reason == "daemon path: passthrough needs root (CAP_SYS_ADMIN)"


def test_the_environment_asks_for_passthrough() -> None:
    assert requested({"ASTRID_FS_PASSTHROUGH": "1"})
    assert not requested({"ASTRID_FS_PASSTHROUGH": "0"})
    assert not requested({})


# ---- against a mount ----------------------------------------------------------


def data_path(s: MountedSession) -> dict[str, Any]:
    path: dict[str, Any] = s.control("stats")["data_path"]
    return path


def daemon_io(s: MountedSession) -> tuple[int, int]:
    """(rchar, wchar) of the daemon: what it moved with read/write calls."""
    pid = s.control("ping")["pid"]
    fields = dict(line.split(":") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


@pytest.fixture
def pt(mount_session: MountFactory, tmp_path: Path) -> MountedSession:
    lower = tmp_path / "lower"
    (lower / "docs").mkdir(parents=True)
    (lower / "README.md").write_text("hello\n")
    (lower / "docs" / "guide.md").write_text("guide\n")
    (lower / "docs" / "more.md").write_text("more\n")
    s = mount_session(lower, None, "--passthrough")
    # Any open makes the daemon ask the kernel (INIT is long done by then).
    (s.mnt / "README.md").read_text()
    path = data_path(s)
    if path["data_path"] != "passthrough":
        # CI runs as root on a kernel with CONFIG_FUSE_PASSTHROUGH.
        missing_part(f"passthrough: {path['reason']}")
    return s


def test_new_file_is_written_and_read_by_the_kernel(pt: MountedSession) -> None:
    before = daemon_io(pt)
    block = os.urandom(MIB)
    with open(pt.mnt / "big", "wb") as f:
        for _ in range(8):
            f.write(block)
    with open(pt.mnt / "big", "rb") as f:
        assert f.read() == block * 8
    after = daemon_io(pt)
    # 8 MiB each way went past the daemon: it moved less than one MiB.
    assert after[0] - before[0] < MIB
    assert after[1] - before[1] < MIB
    assert (pt.upper / "big").read_bytes() == block * 8
    assert data_path(pt)["opens_in_python"]["passthrough"] >= 1


def test_size_and_mtime_are_the_upper_files(pt: MountedSession) -> None:
    with open(pt.mnt / "log", "ab") as f:
        f.write(b"one\n")
    for line in (b"two\n", b"three\n"):
        with open(pt.mnt / "log", "ab") as f:
            f.write(line)
            f.flush()
            seen, upper = os.fstat(f.fileno()), os.stat(pt.upper / "log")
            assert seen.st_size == upper.st_size
            assert seen.st_mtime_ns == upper.st_mtime_ns
    seen, upper = os.stat(pt.mnt / "log"), os.stat(pt.upper / "log")
    assert (seen.st_size, seen.st_mtime_ns) == (upper.st_size, upper.st_mtime_ns)
    assert (pt.mnt / "log").read_bytes() == b"one\ntwo\nthree\n"


def test_reopen_is_answered_without_the_daemon(pt: MountedSession) -> None:
    (pt.mnt / "f").write_text("x")
    for _ in range(3):
        assert (pt.mnt / "f").read_text() == "x"
    path = data_path(pt)
    assert path["opens_in_c"]["passthrough"] >= 3


def test_first_read_of_a_lower_file_is_answered_without_python(pt: MountedSession) -> None:
    # The LOOKUP reply primed the shim's table: the OPEN never reaches Python
    # (as in no_open mode, where it never reached the daemon at all).
    # And when the LOOKUP was the shim's own (part 12 runs with passthrough
    # from shim version 11, priming the table as the daemon's lookup would).
    before = pt.control("stats")
    assert (pt.mnt / "docs" / "guide.md").read_text() == "guide\n"
    after = pt.control("stats")
    opens_in_c = after["data_path"]["opens_in_c"]["daemon"]
    assert opens_in_c == before["data_path"]["opens_in_c"]["daemon"] + 1
    assert after["data_path"]["opens_in_python"] == before["data_path"]["opens_in_python"]
    before = after  # docs/ is named to the shim now: its files are looked up in C
    assert (pt.mnt / "docs" / "more.md").read_text() == "more\n"
    after = pt.control("stats")
    assert after["shim_lookups"]["entries"] == before["shim_lookups"]["entries"] + 1
    opens_in_c = after["data_path"]["opens_in_c"]["daemon"]
    assert opens_in_c == before["data_path"]["opens_in_c"]["daemon"] + 1
    assert after["data_path"]["opens_in_python"] == before["data_path"]["opens_in_python"]


def test_opens_and_releases_are_answered_inside_the_receive_call(pt: MountedSession) -> None:
    # An open(2) with passthrough is an OPEN and a RELEASE: the shim answers
    # both from its table while it drains (no libfuse dispatch, no turn of
    # pyfuse3's loop), for upper files (passthrough) and lower ones alike;
    # over io_uring the queue thread of the caller's CPU does (version 20).
    (pt.mnt / "f").write_text("x")
    before, drained = pt.control("stats"), shim_counts(pt)["drained"]
    for _ in range(50):
        assert (pt.mnt / "f").read_text() == "x"
        assert (pt.mnt / "docs" / "guide.md").read_text() == "guide\n"
    after = pt.control("stats")
    c_before, c_after = before["data_path"]["opens_in_c"], after["data_path"]["opens_in_c"]
    assert c_after["passthrough"] - c_before["passthrough"] == 50
    assert c_after["daemon"] - c_before["daemon"] == 50
    assert after["data_path"]["opens_in_python"] == before["data_path"]["opens_in_python"]
    # 100 OPENs and (all but the last few, still in flight) 100 RELEASEs.
    assert shim_counts(pt)["drained"] - drained >= 190


def test_write_to_a_lower_file_copies_up_and_never_touches_the_lower(
        pt: MountedSession) -> None:
    with open(pt.mnt / "docs" / "guide.md", "a") as f:
        f.write("more\n")
    assert (pt.mnt / "docs" / "guide.md").read_text() == "guide\nmore\n"
    assert (pt.upper / "docs" / "guide.md").read_text() == "guide\nmore\n"
    assert (pt.lower / "docs" / "guide.md").read_text() == "guide\n"


def test_reader_opened_on_the_lower_file_sees_a_later_copy_up(pt: MountedSession) -> None:
    # The behaviour chosen (passthrough.py): a read-only open of a lower file
    # stays on the daemon path, so it follows the copy-up as on kernel
    # overlayfs; the writer that opens meanwhile shares that path.
    reader = os.open(pt.mnt / "docs" / "guide.md", os.O_RDONLY)
    try:
        assert os.pread(reader, 100, 0) == b"guide\n"
        with open(pt.mnt / "docs" / "guide.md", "w") as f:
            f.write("rewritten\n")
        assert os.pread(reader, 100, 0) == b"rewritten\n"
    finally:
        os.close(reader)
    assert (pt.lower / "docs" / "guide.md").read_text() == "guide\n"
    # Once nothing holds it open, the next open gets passthrough.
    served = data_path(pt)["opens_in_python"]["passthrough"]
    with open(pt.mnt / "docs" / "guide.md", "r+") as f:
        f.write("R")
    assert data_path(pt)["opens_in_python"]["passthrough"] == served + 1
    assert (pt.mnt / "docs" / "guide.md").read_text() == "Rewritten\n"


def test_opens_of_one_file_share_its_backing(pt: MountedSession) -> None:
    (pt.mnt / "shared").write_bytes(b"0123456789")
    writer = os.open(pt.mnt / "shared", os.O_RDWR)
    reader = os.open(pt.mnt / "shared", os.O_RDONLY)
    try:
        os.pwrite(writer, b"AB", 0)
        assert os.pread(reader, 10, 0) == b"AB23456789"
        with open(pt.mnt / "shared", "ab") as appender:
            appender.write(b"!")
        assert os.pread(reader, 20, 0) == b"AB23456789!"
    finally:
        os.close(writer)
        os.close(reader)


def test_shared_mmap_writes_reach_the_upper_file(pt: MountedSession) -> None:
    (pt.mnt / "mapped").write_bytes(b"\0" * 4096)
    with open(pt.mnt / "mapped", "r+b") as f, mmap.mmap(f.fileno(), 4096) as m:
        m[:5] = b"hello"
        m.flush()
    assert (pt.upper / "mapped").read_bytes()[:5] == b"hello"
    assert (pt.mnt / "mapped").read_bytes()[:5] == b"hello"


def test_unlinked_open_file_keeps_working(pt: MountedSession) -> None:
    (pt.mnt / "gone").write_text("data")
    fd = os.open(pt.mnt / "gone", os.O_RDWR)
    try:
        os.unlink(pt.mnt / "gone")
        os.pwrite(fd, b"DA", 0)
        assert os.pread(fd, 10, 0) == b"DAta"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert not (pt.mnt / "gone").exists()


def test_truncate_and_fsync_of_a_passthrough_file(pt: MountedSession) -> None:
    with open(pt.mnt / "t", "wb") as f:
        f.write(b"x" * 10000)
        f.flush()
        os.fsync(f.fileno())
        f.truncate(10)
        assert os.fstat(f.fileno()).st_size == 10
    assert (pt.upper / "t").read_bytes() == b"x" * 10
    with open(pt.mnt / "t", "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(b"y")
    assert (pt.mnt / "t").read_bytes() == b"x" * 10 + b"y"


def test_status_names_the_data_path(pt: MountedSession, mount_session: MountFactory) -> None:
    plain = mount_session(None, None, "--no-passthrough")
    out = pt.cli("status", "--json").stdout
    rows = {r["name"]: r for r in json.loads(out)["sessions"]}
    assert rows[pt.name]["data_path"]["data_path"] == "passthrough"
    assert rows[plain.name]["data_path"]["data_path"] == "daemon"
    text = pt.cli("status").stdout
    assert "data: passthrough" in text
    assert "data: daemon path (passthrough not requested)" in text


def test_a_file_held_open_across_a_commit_stays_in_the_session(pt: MountedSession) -> None:
    # The kernel keeps writing to the upper file it was given: the commit
    # leaves that file in the upper (equal to the lower), so writes after
    # the commit show in the session and never reach the lower.
    from astrid_fs.cli.daemonlink import DaemonLink
    from astrid_fs.review.commit import commit
    from astrid_fs.session import open_session

    (pt.mnt / "held.txt").write_text("one\n")
    with open(pt.mnt / "held.txt", "r+b") as writer:
        session = open_session(pt.name, pt.home)
        commit(session, [], mount=DaemonLink(session))
        assert (pt.lower / "held.txt").read_text() == "one\n"
        assert (pt.upper / "held.txt").read_text() == "one\n"
        writer.seek(0, os.SEEK_END)
        writer.write(b"two\n")
        writer.flush()
        assert os.fstat(writer.fileno()).st_size == len(b"one\ntwo\n")
    assert (pt.mnt / "held.txt").read_text() == "one\ntwo\n"
    assert (pt.lower / "held.txt").read_text() == "one\n"


def test_a_closed_file_leaves_the_upper_at_commit(pt: MountedSession) -> None:
    from astrid_fs.cli.daemonlink import DaemonLink
    from astrid_fs.review.commit import commit
    from astrid_fs.session import open_session

    (pt.mnt / "done.txt").write_text("done\n")
    session = open_session(pt.name, pt.home)
    commit(session, [], mount=DaemonLink(session))
    assert (pt.lower / "done.txt").read_text() == "done\n"
    assert not (pt.upper / "done.txt").exists()
    assert (pt.mnt / "done.txt").read_text() == "done\n"


def test_first_open_for_writing_is_decided_inside_the_receive_call(pt: MountedSession) -> None:
    # Shim version 14: an OPEN the table cannot answer (here a lower file's
    # first open for writing: copy-up, then a backing on the copy) is decided
    # by the daemon's callback inside the drain; the open handler never runs.
    before = pt.control("stats")
    with open(pt.mnt / "docs" / "more.md", "a") as f:
        f.write("appended\n")
    after = pt.control("stats")
    decided = after["data_path"]["decided_in_drain"] - before["data_path"]["decided_in_drain"]
    assert decided == 1
    assert after["data_path"]["left_to_handler"] == before["data_path"]["left_to_handler"]
    assert after["requests"].get("open", 0) == before["requests"].get("open", 0)
    opened = after["data_path"]["opens_in_python"]["passthrough"]
    assert opened == before["data_path"]["opens_in_python"]["passthrough"] + 1
    assert (pt.mnt / "docs" / "more.md").read_text() == "more\nappended\n"
    assert (pt.upper / "docs" / "more.md").read_text() == "more\nappended\n"
    assert (pt.lower / "docs" / "more.md").read_text() == "more\n"
