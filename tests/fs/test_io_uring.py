"""FUSE over io_uring (fuse/io_uring.py, shim part 15): requests served on the
ring of the CPU that sent them; what needs no daemon state is answered by that
CPU's queue thread, the rest forwarded to pyfuse3 unchanged.

The kernel switch is tested on a stand-in file; the rest mounts with
`--io-uring` (CI: root on Linux 6.14+, where the switch exists). The daemon's
ring counters say where each request went."""

from __future__ import annotations

import os
import select
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from astrid_fs.fuse.config import io_uring_requested
from astrid_fs.fuse.io_uring import kernel_switch
from tests.support.mounts import MountedSession, missing_part, run_cli

MountFactory = Callable[..., MountedSession]
FILES = 120
EXIT_WAIT_S = 30


def test_the_environment_asks_for_io_uring() -> None:
    assert io_uring_requested({"ASTRID_FS_IO_URING": "1"})
    assert not io_uring_requested({"ASTRID_FS_IO_URING": "0"})
    assert not io_uring_requested({})


def test_the_kernel_switch_is_turned_on_only_when_allowed(tmp_path: Path) -> None:
    switch = tmp_path / "enable_uring"
    switch.write_text("N\n")
    assert kernel_switch(switch, turn_on=False) == f"{switch} is N"
    assert switch.read_text() == "N\n"
    assert kernel_switch(switch, turn_on=True) is None
    assert switch.read_text().strip() == "Y"
    assert kernel_switch(switch, turn_on=False) is None
    missing = kernel_switch(tmp_path / "absent", turn_on=True)
    assert missing is not None and "no FUSE over io_uring" in missing


# ---- against a mount ----------------------------------------------------------


@contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """Run the calling thread on `cpu` only (its requests go to that ring)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def ring(s: MountedSession) -> dict[str, int]:
    stats = s.control("stats")
    counts: dict[str, int] = stats["io_uring"]
    return counts


@pytest.fixture
def ur(mount_session: MountFactory, tmp_path: Path) -> MountedSession:
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(FILES):
        (lower / "d" / f"f{i:03}").write_text("line\n")
    s = mount_session(lower, None, "--io-uring")
    os.stat(s.mnt / "d")  # any request waits for INIT, where the rings start
    transport = s.control("stats")["transport"]
    if transport != "io_uring":
        # CI runs as root on a kernel with FUSE over io_uring (6.14+).
        missing_part(f"io_uring: {transport}")
    return s


def test_each_cpus_requests_are_answered_and_forwarded(ur: MountedSession) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    names = sorted(os.listdir(ur.mnt / "d"))
    before = ring(ur)
    for k, cpu in enumerate(cpus):
        with on_cpu(cpu):
            for name in names[k::len(cpus)]:
                for _ in range(2):  # the first copies up (Python), the second not
                    fd = os.open(ur.mnt / "d" / name, os.O_WRONLY | os.O_APPEND)
                    try:
                        os.write(fd, b"more\n")
                    finally:
                        os.close(fd)
                assert (ur.mnt / "d" / name).read_bytes() == b"line\nmore\nmore\n"
    after = ring(ur)
    assert after["ring_failures"] == 0
    # Every second append's WRITE was answered by a queue thread; every
    # copy-up's WRITE was forwarded to Python and its reply committed.
    assert after["ring_answered_in_c"] - before["ring_answered_in_c"] >= FILES
    assert after["ring_forwarded"] - before["ring_forwarded"] >= FILES
    assert after["ring_replies_committed"] == after["ring_forwarded"]
    for name in names:
        assert (ur.upper / "d" / name).read_bytes() == b"line\nmore\nmore\n"
    assert (ur.lower / "d" / names[0]).read_bytes() == b"line\n"


def test_cpus_and_python_at_once(ur: MountedSession) -> None:
    """Queue threads write through the fd table while the trio thread
    creates, renames and removes (which changes that table)."""
    cpus = sorted(os.sched_getaffinity(0))
    names = sorted(os.listdir(ur.mnt / "d"))
    errors: list[BaseException] = []

    def appender(cpu: int, mine: list[str]) -> None:
        try:
            with on_cpu(cpu):
                for _ in range(5):
                    for name in mine:
                        with open(ur.mnt / "d" / name, "ab") as f:
                            f.write(b"x")
        except BaseException as e:  # reported below
            errors.append(e)

    def churner() -> None:
        try:
            for i in range(200):
                p = ur.mnt / f"tmp{i}"
                p.write_bytes(b"%d" % i)
                os.rename(p, ur.mnt / f"kept{i % 7}")
                if i % 3 == 0:
                    os.unlink(ur.mnt / f"kept{i % 7}")
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=appender, args=(cpu, names[k::len(cpus)]))
               for k, cpu in enumerate(cpus)]
    workers.append(threading.Thread(target=churner))
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    for name in names:
        assert (ur.mnt / "d" / name).read_bytes() == b"line\n" + b"x" * 5
        assert (ur.upper / "d" / name).read_bytes() == b"line\n" + b"x" * 5
    assert ring(ur)["ring_failures"] == 0


def test_status_names_the_transport_and_unmount_ends_the_daemon(
        ur: MountedSession) -> None:
    out = run_cli("status", home=ur.home).stdout
    assert "requests: io_uring" in out
    pid = ur.control("ping")["pid"]
    pidfd = os.pidfd_open(pid)
    try:
        # The kernel's own unmount (astrid-fs umount would stop a daemon that
        # lingered): the queue threads must end with the connection.
        subprocess.run(["umount", str(ur.mnt)], check=True)
        ready, _, _ = select.select([pidfd], [], [], EXIT_WAIT_S)
        assert ready, f"the daemon outlived its mount by {EXIT_WAIT_S}s"
    finally:
        os.close(pidfd)
