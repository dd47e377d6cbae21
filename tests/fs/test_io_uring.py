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
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from astrid_fs.fuse.config import io_uring_requested
from astrid_fs.fuse.io_uring import kernel_switch
from tests.support.mounts import (
    MountedSession,
    loop_ext4,
    missing_part,
    named_threads,
    require_fuse,
    ring_threads,
    run_cli,
    while_looping,
)

MountFactory = Callable[..., MountedSession]
FILES = 120
EXIT_WAIT_S = 30


def test_io_uring_is_asked_for_unless_the_environment_says_no() -> None:
    assert io_uring_requested({})
    assert io_uring_requested({"ASTRID_FS_IO_URING": "1"})
    for off in ("0", "no", "OFF", "false"):
        assert not io_uring_requested({"ASTRID_FS_IO_URING": off})


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


def ring_mount(mount_session: MountFactory, lower: Path, *more: str) -> MountedSession:
    s = mount_session(lower, None, "--io-uring", *more)
    os.stat(s.mnt)  # any request waits for INIT, where the rings start
    stats = s.control("stats")
    if stats["transport"] != "io_uring":
        # CI runs as root on a kernel with FUSE over io_uring (6.14+).
        missing_part(f"io_uring: {stats['transport']}")
    if "--passthrough" in more:
        (lower / ".probe").touch()
        (s.mnt / ".probe").read_bytes()  # the first OPEN probes passthrough
        path = s.control("stats")["data_path"]["data_path"]
        if path != "passthrough":  # (CI: root on Linux 6.9+)
            missing_part(f"passthrough: {path}")
    return s


@pytest.fixture
def ur(mount_session: MountFactory, tmp_path: Path) -> MountedSession:
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(FILES):
        (lower / "d" / f"f{i:03}").write_text("line\n")
    return ring_mount(mount_session, lower)


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


def test_a_mount_serves_io_uring_by_default_and_dev_fuse_when_told(
        mount_session: MountFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default transport is io_uring where the kernel offers it; the
    environment and --no-io-uring turn it off."""
    (tmp_path / "lower").mkdir()
    monkeypatch.delenv("ASTRID_FS_IO_URING", raising=False)
    plain = mount_session(tmp_path / "lower")
    os.stat(plain.mnt)
    transport = plain.control("stats")["transport"]
    if transport != "io_uring":
        missing_part(f"io_uring: {transport}")  # CI's kernel has it (6.14+)
    told = mount_session(tmp_path / "lower", None, "--no-io-uring")
    os.stat(told.mnt)
    assert told.control("stats")["transport"] == "/dev/fuse (io_uring not requested)"
    monkeypatch.setenv("ASTRID_FS_IO_URING", "0")
    env_off = mount_session(tmp_path / "lower")
    os.stat(env_off.mnt)
    assert env_off.control("stats")["transport"] == "/dev/fuse (io_uring not requested)"


# ---- several queue threads per CPU, the fd table locked for lookups only (v24) -


def blocked_threads(pid: int, name: str) -> list[int]:
    """Daemon `pid`'s threads called `name` in uninterruptible sleep."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        task = Path(f"/proc/{pid}/task/{tid}")
        try:
            comm = (task / "comm").read_text().strip()
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if comm == name and state == "D":
            out.append(int(tid))
    return out


@pytest.mark.parametrize("transport", ["--io-uring", "--no-io-uring"])
def test_a_request_that_waits_holds_back_no_other(tmp_path: Path, transport: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread whose request waits (here a write to a frozen upper file
    system; on a busy disk, any cold read) holds back neither the next request
    of its CPU nor another thread's read. Over io_uring each CPU has several
    queue threads (shim version 24); over /dev/fuse, when asked for
    (ASTRID_FS_DEV_THREADS), several threads read it (version 25; else
    pyfuse3's one thread answers every request); and
    the fd table is locked only to look an fd up, not across the I/O
    (version 24). Before, the read waited for the write to end: 8 threads
    reading 20,000 cold files took 4.3 (io_uring) and 4.7 (/dev/fuse) times
    as long as native."""
    require_fuse()
    lower, home, mnt = tmp_path / "lower", tmp_path / "home", tmp_path / "mnt"
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "doc.txt").write_text("lower text\n")
    mnt.mkdir()
    cpu = min(os.sched_getaffinity(0))
    monkeypatch.setenv("ASTRID_FS_DEV_THREADS", "8")  # (no effect over io_uring)
    with loop_ext4(tmp_path / "home.img", home):
        s = MountedSession("frozen", home, lower, mnt)
        s.mount(transport, "--no-passthrough")  # (with it the kernel writes the upper itself)
        frozen = False
        writer = None
        try:
            os.stat(mnt / "d")  # (d's entry cached: what the reader needs is answered in C)
            stats = s.control("stats")
            if transport == "--io-uring":
                if stats["transport"] != "io_uring":
                    missing_part(f"io_uring: {stats['transport']}")
                waiting = f"astrid-ring{cpu}"
            else:
                assert stats["dev_threads"]["threads"] == 8, stats["dev_threads"]
                waiting = "astrid-dev"
            pid = s.control("ping")["pid"]
            fd = os.open(mnt / "log.txt", os.O_WRONLY | os.O_CREAT, 0o644)
            with on_cpu(cpu):
                os.write(fd, b"first\n")
            subprocess.run(["fsfreeze", "-f", str(home)], check=True)
            frozen = True

            def write_second() -> None:
                with on_cpu(cpu):
                    os.pwrite(fd, b"second\n", 6)

            writer = threading.Thread(target=write_second, daemon=True)
            writer.start()
            deadline = time.monotonic() + EXIT_WAIT_S
            while not blocked_threads(pid, waiting):  # (a poll for a state, bounded)
                assert time.monotonic() < deadline, f"the write never reached an {waiting} thread"
                time.sleep(0.01)
            got: list[str] = []

            def read_doc() -> None:
                with on_cpu(cpu):
                    got.append((mnt / "d" / "doc.txt").read_text())

            reader = threading.Thread(target=read_doc, daemon=True)
            reader.start()
            reader.join(EXIT_WAIT_S)
            assert got == ["lower text\n"], "a read waited for another thread's write"
            assert writer.is_alive() and blocked_threads(pid, waiting)
        finally:
            if frozen:
                subprocess.run(["fsfreeze", "-u", str(home)], check=True)
            if writer is not None:
                writer.join(EXIT_WAIT_S)
                os.close(fd)
            s.umount()
        assert (s.upper / "log.txt").read_bytes() == b"first\nsecond\n"


def test_dev_fuse_is_read_by_threads_when_asked(
        mount_session: MountFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ASTRID_FS_DEV_THREADS=N: where the rings do not run, N threads read
    /dev/fuse and answer what a queue thread would (their counts say so);
    unset, pyfuse3's thread reads every request, as before shim version 25;
    over io_uring the rings answer and the threads never start."""
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(FILES):
        (lower / "d" / f"f{i:03}").write_text("line\n")
    monkeypatch.delenv("ASTRID_FS_DEV_THREADS", raising=False)
    plain = mount_session(lower, None, "--no-io-uring")
    assert (plain.mnt / "d" / "f000").read_text() == "line\n"
    assert plain.control("stats")["dev_threads"] is None
    monkeypatch.setenv("ASTRID_FS_DEV_THREADS", "8")
    s = mount_session(lower, None, "--no-io-uring")
    for name in sorted(os.listdir(s.mnt / "d")):
        assert (s.mnt / "d" / name).read_text() == "line\n"
    stats = s.control("stats")
    assert stats["transport"] == "/dev/fuse (io_uring not requested)"
    threads = stats["dev_threads"]
    assert threads["threads"] == 8
    assert threads["answered_in_c"] >= 2 * FILES  # a LOOKUP and a READ each
    assert len(named_threads(s.control("ping")["pid"], "astrid-dev")) == 8
    rings = ring_mount(mount_session, lower)
    assert rings.control("stats")["dev_threads"]["threads"] == 0


def test_each_cpu_has_several_queue_threads_and_the_switch_sets_how_many(
        mount_session: MountFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lower").mkdir()
    """32 / CPUs per CPU by default, at least one and at most 8 (a cold `git
    status` reads from up to 20 threads); ASTRID_FS_RING_THREADS=N asks for N
    per CPU, 1 the one per CPU of versions 15 to 23."""
    possible = Path("/sys/devices/system/cpu/possible").read_text().strip()
    cpus = int(possible.rsplit("-", 1)[-1]) + 1  # (the kernel has a queue per possible CPU)
    default = ring_mount(mount_session, tmp_path / "lower")
    assert len(ring_policies(default)) == cpus * min(8, max(1, 32 // cpus))
    for per in (1, 3):
        monkeypatch.setenv("ASTRID_FS_RING_THREADS", str(per))
        asked = ring_mount(mount_session, tmp_path / "lower")
        assert len(ring_policies(asked)) == cpus * per



# ---- the queue threads' scheduling class (shim versions 19, 23 and 36) --------


def ring_policies(s: MountedSession) -> dict[int, int]:
    """The scheduling policy of each of the daemon's queue threads, by id."""
    return ring_threads(s.control("ping")["pid"])


def policies_become(s: MountedSession, policy: int, timeout: float = 30.0) -> dict[int, int]:
    """Wait (bounded) until every queue thread has `policy`; its policies then."""
    deadline = time.monotonic() + timeout
    while True:
        policies = ring_policies(s)
        if policies and set(policies.values()) == {policy}:
            return policies
        assert time.monotonic() < deadline, policies
        time.sleep(0.02)


def counts_reach(s: MountedSession, key: str, at_least: int, timeout: float = 30.0
                 ) -> dict[str, int]:
    """Wait (bounded) until the ring counter `key` is `at_least`."""
    deadline = time.monotonic() + timeout
    while (counts := ring(s))[key] < at_least:
        assert time.monotonic() < deadline, counts
        time.sleep(0.02)
    return counts


PSI_LINE = ("some avg10=0.00 avg60=0.00 avg300=0.00 total={}\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


def write_pressure(path: Path, total_us: int) -> None:
    """A file in /proc/pressure/cpu's format, replaced atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(PSI_LINE.format(total_us))
    tmp.replace(path)


def test_queue_threads_idle_while_nothing_waits_for_a_cpu_and_ordinary_while_something_does(
        mount_session: MountFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shim 36, the default: SCHED_IDLE while the machine's CPU pressure is low
    (a caller woken by its queue thread stays on its CPU: 1,000 appends 1.67x
    native against 3.22x), SCHED_OTHER as soon as tasks wait for a CPU (under
    SCHED_IDLE a queue thread waiting on the disk then waited out every busy
    task's slice: a cold grep with every CPU busy took 25x as long). The
    pressure here is a file this test writes in PSI's format
    (ASTRID_FS_RING_PRESSURE), so both directions happen on cue whatever else
    runs on the machine; the next test uses the kernel's."""
    pressure = tmp_path / "cpu-pressure"
    write_pressure(pressure, 0)
    monkeypatch.setenv("ASTRID_FS_RING_PRESSURE", str(pressure))
    (tmp_path / "lower").mkdir()
    (tmp_path / "lower" / "f").write_text("line\n")
    s = ring_mount(mount_session, tmp_path / "lower")
    assert len(named_threads(s.control("ping")["pid"], "astrid-cpuwatch")) == 1
    # Quiet (no time waited): idle after a second of it.
    policies_become(s, os.SCHED_IDLE)
    assert counts_reach(s, "ring_turned_idle", 1)["ring_turned_ordinary"] == 0
    # Tasks wait for a CPU: ordinary at the next look, and while it lasts.
    total = 0
    stop = threading.Event()

    def busy() -> None:
        nonlocal total
        while not stop.is_set():
            total += 1_000_000  # a second of waiting per 20 ms
            write_pressure(pressure, total)
            time.sleep(0.02)  # (pacing the writer, not synchronisation)

    writer = threading.Thread(target=busy)
    writer.start()
    try:
        counts_reach(s, "ring_turned_ordinary", 1)
        for _ in range(3):
            assert set(policies_become(s, os.SCHED_OTHER, timeout=1).values()) == {os.SCHED_OTHER}
            with open(s.mnt / "f", "ab") as f:  # (served meanwhile)
                f.write(b"x")
        assert ring(s)["ring_turned_idle"] == 1
    finally:
        stop.set()
        writer.join()
    # Quiet again: idle again.
    policies_become(s, os.SCHED_IDLE)
    after = counts_reach(s, "ring_turned_idle", 2)
    assert after["ring_turned_idle"] - after["ring_turned_ordinary"] == 1
    assert (s.mnt / "f").read_bytes() == b"line\nxxx"


def test_queue_threads_are_ordinary_while_every_cpu_is_busy(
        mount_session: MountFactory, tmp_path: Path) -> None:
    """The kernel's own pressure: with a busy loop on every CPU (a build on
    all cores) the queue threads are SCHED_OTHER within moments, and stay so
    while the loops run, whatever they were before; reads and appends meanwhile
    get their data."""
    cpus = sorted(os.sched_getaffinity(0))
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(FILES):
        (lower / "d" / f"f{i:03}").write_text(f"{i}\n")
    s = ring_mount(mount_session, lower)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in cpus]
    try:
        for hog, cpu in zip(hogs, cpus, strict=True):
            os.sched_setaffinity(hog.pid, {cpu})
        policies_become(s, os.SCHED_OTHER)
        for k in range(3):
            for i in range(FILES):
                path = s.mnt / "d" / f"f{i:03}"
                assert path.read_text().startswith(f"{i}\n")
                with open(path, "ab") as f:
                    f.write(b"%d" % k)
            assert set(ring_policies(s).values()) == {os.SCHED_OTHER}
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    for i in range(FILES):
        assert (s.upper / "d" / f"f{i:03}").read_bytes() == f"{i}\n012".encode()
    counts = ring(s)
    assert counts["ring_failures"] == 0
    assert counts["ring_turned_idle"] - counts["ring_turned_ordinary"] in (0, 1)


def test_without_cpu_pressure_to_read_or_when_told_queue_threads_stay_ordinary(
        mount_session: MountFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No PSI (a kernel without it, psi=0): no watching thread, SCHED_OTHER
    (the class that cannot starve). ASTRID_FS_RING_IDLE=0 likewise, with a
    quiet pressure file that would otherwise make them idle."""
    (tmp_path / "lower").mkdir()
    monkeypatch.setenv("ASTRID_FS_RING_PRESSURE", str(tmp_path / "absent"))
    s = ring_mount(mount_session, tmp_path / "lower")
    pid = s.control("ping")["pid"]
    deadline = time.monotonic() + 30
    while named_threads(pid, "astrid-cpuwatch"):  # it gives up at once
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert set(ring_policies(s).values()) == {os.SCHED_OTHER}
    quiet = tmp_path / "quiet"
    write_pressure(quiet, 0)
    monkeypatch.setenv("ASTRID_FS_RING_PRESSURE", str(quiet))
    monkeypatch.setenv("ASTRID_FS_RING_IDLE", "0")
    (tmp_path / "lower2").mkdir()
    told = ring_mount(mount_session, tmp_path / "lower2")
    assert not named_threads(told.control("ping")["pid"], "astrid-cpuwatch")
    assert set(ring_policies(told).values()) == {os.SCHED_OTHER}
    assert ring(told)["ring_turned_idle"] == 0


def test_the_switch_makes_queue_threads_idle_class(mount_session: MountFactory, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """ASTRID_FS_RING_IDLE=1: SCHED_IDLE always, however busy the machine (no
    watching thread)."""
    monkeypatch.setenv("ASTRID_FS_RING_IDLE", "1")
    (tmp_path / "lower").mkdir()
    s = ring_mount(mount_session, tmp_path / "lower")
    policies = ring_policies(s)
    assert policies and set(policies.values()) == {os.SCHED_IDLE}, policies
    assert not named_threads(s.control("ping")["pid"], "astrid-cpuwatch")


def ring_cpus(s: MountedSession) -> list[set[int]]:
    """The CPUs each of the daemon's queue threads may run on."""
    return [os.sched_getaffinity(tid) for tid in ring_policies(s)]


def test_queue_threads_are_pinned_to_their_cpu_unless_told(
        ur: MountedSession, mount_session: MountFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinned by default (a request is answered on its caller's CPU: the
    quicker LOOKUP round trip); ASTRID_FS_RING_PIN=0 lets them run anywhere
    (a sequential reader's copies then use both CPUs)."""
    cpus = os.sched_getaffinity(0)
    pinned = ring_cpus(ur)
    assert pinned and all(len(allowed) == 1 for allowed in pinned), pinned
    assert set().union(*pinned) == cpus
    monkeypatch.setenv("ASTRID_FS_RING_PIN", "0")
    (tmp_path / "lower2").mkdir()
    free = ring_cpus(ring_mount(mount_session, tmp_path / "lower2"))
    assert free and all(allowed == cpus for allowed in free), free


def test_large_reads_let_a_queue_thread_off_its_cpu_until_its_next_request(
        mount_session: MountFactory, tmp_path: Path) -> None:
    """Shim 35: a pinned queue thread answering a sequential reader's large
    READs may run on any CPU (its pread and the kernel's copy out of the ring
    then do not share the reader's CPU), and is pinned again by its next
    other request. What the reader gets is the lower file byte for byte, with
    small requests racing the big READs on the same ring; the daemon's counts
    of threads let go and pinned again match the threads' CPU sets."""
    cpus = sorted(os.sched_getaffinity(0))
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    data = os.urandom(24 << 20)
    for name in ("big", "big2", "big3"):
        (lower / name).write_bytes(data)
    for i in range(FILES):
        (lower / "d" / f"f{i:03}").write_text(f"{i}\n")
    s = ring_mount(mount_session, lower)

    def wide() -> int:
        return sum(1 for allowed in ring_cpus(s) if len(allowed) > 1)

    assert wide() == 0
    with on_cpu(cpus[0]), (s.mnt / "big").open("rb", buffering=0) as f:
        half = b"".join(f.read(1 << 20) for _ in range(12))
        # Mid-file every READ so far was 1 MiB (the read-ahead's): the
        # threads that answered them are still let go.
        counts = ring(s)
        loose = wide()
        rest = b"".join(iter(lambda: f.read(1 << 20), b""))
    assert half + rest == data
    if len(cpus) == 1:  # nowhere else to run: nothing to let go of
        assert counts["ring_loosened"] == 0 and loose == 0
        return
    assert counts["ring_loosened"] >= 1
    assert loose == counts["ring_loosened"] - counts["ring_repinned"] >= 1
    # (the last READ, short at the end of the file, pinned its thread again)
    counts = ring(s)
    assert wide() == counts["ring_loosened"] - counts["ring_repinned"]

    # Small requests on the same ring while a second reader streams: the
    # threads that take them are pinned again, and nobody reads a wrong byte.
    stop = threading.Event()
    errors: list[str] = []

    def stat_loop() -> None:
        with on_cpu(cpus[0]):
            while not stop.is_set():
                for name in sorted(os.listdir(s.mnt / "d")):
                    if (s.mnt / "d" / name).read_text() != f"{int(name[1:])}\n":
                        errors.append(name)

    t = threading.Thread(target=stat_loop)
    t.start()
    try:
        with on_cpu(cpus[0]):
            for name in ("big2", "big3"):  # (not in the mount's page cache yet)
                assert (s.mnt / name).read_bytes() == data
    finally:
        stop.set()
        t.join()
    assert not errors
    with on_cpu(cpus[0]):
        for i in range(FILES):
            os.stat(s.mnt / "d" / f"f{i:03}")
    after = ring(s)
    assert after["ring_repinned"] >= 1
    assert wide() == after["ring_loosened"] - after["ring_repinned"]
    assert after["ring_failures"] == 0


def test_callers_are_served_while_every_cpu_is_busy(ur: MountedSession) -> None:
    """With a busy loop on every CPU (a build on all cores), appends (answered
    by queue threads) and creates (forwarded to Python, committed by them)
    go through, each with its data."""
    cpus = sorted(os.sched_getaffinity(0))
    names = sorted(os.listdir(ur.mnt / "d"))
    before = ring(ur)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in cpus]
    try:
        for hog, cpu in zip(hogs, cpus, strict=True):
            os.sched_setaffinity(hog.pid, {cpu})
        for k, cpu in enumerate(cpus):
            with on_cpu(cpu):
                for name in names:
                    with open(ur.mnt / "d" / name, "ab") as f:
                        f.write(b"%d" % k)
                for i in range(20):
                    (ur.mnt / f"new{k}-{i}").write_bytes(b"%d" % i)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    after = ring(ur)
    want = b"line\n" + b"".join(b"%d" % k for k in range(len(cpus)))
    for name in names:
        assert (ur.mnt / "d" / name).read_bytes() == want
    for k in range(len(cpus)):
        for i in range(20):
            assert (ur.upper / f"new{k}-{i}").read_bytes() == b"%d" % i
    assert after["ring_failures"] == 0
    assert after["ring_answered_in_c"] - before["ring_answered_in_c"] >= FILES


def test_getattrs_of_what_part_12_found_are_answered_by_queue_threads(
        ur: MountedSession) -> None:
    """A READ drops the file's cached atime, so a stat after it is a GETATTR:
    answered on the ring from the lower entry, not forwarded."""
    d = ur.mnt / "d"
    names = sorted(os.listdir(d))
    for name in names:
        assert (d / name).read_bytes() == b"line\n"
    before, counts = ring(ur), ur.control("stats")["shim_lookups"]["getattrs"]
    for name in names:
        seen, real = os.stat(d / name), os.stat(ur.lower / "d" / name)
        assert (seen.st_ino, seen.st_size, seen.st_mtime_ns, seen.st_mode) == \
            (real.st_ino, real.st_size, real.st_mtime_ns, real.st_mode)
    after = ring(ur)
    assert ur.control("stats")["shim_lookups"]["getattrs"] - counts >= FILES - 10
    assert after["ring_forwarded"] - before["ring_forwarded"] <= 10


def test_lookups_answered_on_rings_are_absorbed_as_they_go(
        mount_session: MountFactory, tmp_path: Path) -> None:
    """The daemon counts each lookup a queue thread answered: over io_uring the
    trio thread does so while the rings go on (a queue thread rings for it),
    not all at once before the next request for Python (git's index refresh:
    10,000 LOOKUPs, then the index.lock create waited for their absorb)."""
    lower = tmp_path / "lower"
    (lower / "many").mkdir(parents=True)
    for i in range(3000):
        (lower / "many" / f"file{i:05}").write_bytes(b"")
    s = ring_mount(mount_session, lower)
    for i in range(3000):
        assert os.stat(s.mnt / "many" / f"file{i:05}").st_size == 0
    counts = s.control("stats")["shim_lookups"]
    assert counts["entries"] >= 2900, counts
    assert counts["absorbs_asked"] >= 1, counts
    assert counts["absorbed"] >= 3000, counts


def test_rings_look_up_side_by_side_while_the_table_changes(
        mount_session: MountFactory, tmp_path: Path) -> None:
    """Part 12 lets its lock go for each lstat (version 19), so two queue
    threads stat cold lower inodes at once. Walkers on every CPU stat a
    lower-only tree over and over while the daemon's table changes under
    them (directories renamed, copied up, the kernel told to forget): every
    answer is the lower entry, as the daemon's own lookup would give."""
    lower = tmp_path / "lower"
    for i in range(8):
        for j in range(60):
            p = lower / "t" / f"d{i}" / f"f{j}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"z" * j)
    (lower / "churn").mkdir()
    s = ring_mount(mount_session, lower)
    cpus = sorted(os.sched_getaffinity(0))
    errors: list[BaseException] = []
    done = threading.Event()

    def walker(cpu: int) -> None:
        try:
            with on_cpu(cpu):
                for _ in range(6):
                    for i in range(8):
                        for j in range(60):
                            seen = os.stat(s.mnt / "t" / f"d{i}" / f"f{j}")
                            real = os.stat(lower / "t" / f"d{i}" / f"f{j}")
                            assert (seen.st_ino, seen.st_size, seen.st_mtime_ns) == \
                                (real.st_ino, real.st_size, real.st_mtime_ns), (i, j)
        except BaseException as e:  # reported below
            errors.append(e)

    def churner() -> None:
        try:
            k = 0
            while not done.is_set():
                (s.mnt / "churn" / f"x{k}").mkdir()
                os.rename(s.mnt / "churn" / f"x{k}", s.mnt / "churn" / f"y{k}")
                (s.mnt / "t" / f"d{k % 8}" / "new").mkdir(exist_ok=True)  # gets an upper dir
                if k % 10 == 0:
                    s.control("invalidate")
                k += 1
        except BaseException as e:
            errors.append(e)

    walkers = [threading.Thread(target=walker, args=(cpu,)) for cpu in cpus]
    churn = threading.Thread(target=churner)
    churn.start()
    for w in walkers:
        w.start()
    for w in walkers:
        w.join()
    done.set()
    churn.join()
    assert errors == []
    assert ring(s)["ring_failures"] == 0
    assert not (lower / "churn" / "y0").exists()


def test_passthrough_opens_and_releases_are_answered_by_queue_threads(
        mount_session: MountFactory, tmp_path: Path) -> None:
    """With passthrough too (version 20), an OPEN the table answers and the
    RELEASE of a handle it gave out are answered on the ring of the caller's
    CPU, as the trio thread's drain answers them over /dev/fuse: an append to
    an upper file is then one round trip on one CPU. An OPEN the table cannot
    answer (the first for writing: copy-up, a backing) still reaches the
    daemon's decision, forwarded."""
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(FILES):
        (lower / "d" / f"f{i:03}").write_text("line\n")
    s = mount_session(lower, None, "--io-uring", "--passthrough")
    (s.mnt / "d" / "f000").read_text()  # INIT done, the daemon asked the kernel
    stats = s.control("stats")
    if stats["transport"] != "io_uring" or stats["data_path"]["data_path"] != "passthrough":
        # CI runs as root on a kernel with both (6.14+).
        missing_part(f"io_uring + passthrough: {stats['transport']}, "
                     f"{stats['data_path']['reason']}")
    names = sorted(os.listdir(s.mnt / "d"))

    cpus = sorted(os.sched_getaffinity(0))

    def append_all() -> None:
        for k, cpu in enumerate(cpus):
            with on_cpu(cpu):
                for name in names[k::len(cpus)]:
                    fd = os.open(s.mnt / "d" / name, os.O_WRONLY | os.O_APPEND)
                    try:
                        os.write(fd, b"more\n")
                    finally:
                        os.close(fd)

    append_all()  # copies up: the daemon decides each first writable OPEN
    first = s.control("stats")
    assert first["data_path"]["decided_in_drain"] + sum(
        first["data_path"]["opens_in_python"].values()) >= FILES
    before = ring(s)
    append_all()
    after, stats = ring(s), s.control("stats")
    opens = stats["data_path"]["opens_in_c"]["passthrough"] \
        - first["data_path"]["opens_in_c"]["passthrough"]
    assert opens == FILES  # every OPEN from the table
    # Those OPENs and their RELEASEs (but a few still in flight) on the rings:
    assert after["ring_answered_in_c"] - before["ring_answered_in_c"] >= 2 * FILES - 10
    assert after["ring_forwarded"] - before["ring_forwarded"] <= 10
    assert stats["shim_writes"]["drained"] - first["shim_writes"]["drained"] <= 10
    assert after["ring_failures"] == 0
    for name in names:
        assert (s.mnt / "d" / name).read_bytes() == b"line\nmore\nmore\n"
        assert (s.upper / "d" / name).read_bytes() == b"line\nmore\nmore\n"
        assert (lower / "d" / name).read_bytes() == b"line\n"


def test_first_reads_of_lower_files_are_answered_by_queue_threads(
        mount_session: MountFactory, tmp_path: Path) -> None:
    """A file part 12 found (a LOOKUP answered in C) has no fd until its first
    READ; a queue thread opens it itself (version 21), as the trio thread's
    drain does, instead of forwarding the READ (a cold `grep -r` forwarded
    one per file). The files read are the lower's, byte for byte."""
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(FILES):
        (lower / "d" / f"f{i:03}").write_bytes(f"file {i}\n".encode() * (i + 1))
    s = ring_mount(mount_session, lower)
    names = sorted(os.listdir(s.mnt / "d"))
    cpus = sorted(os.sched_getaffinity(0))
    for name in names:  # LOOKUPs answered in C (part 12 finds the files)
        assert os.stat(s.mnt / "d" / name).st_size == os.stat(lower / "d" / name).st_size
    before = ring(s)
    opened = s.control("stats")["shim_lookups"]["files_opened"]
    for k, cpu in enumerate(cpus):
        with on_cpu(cpu):
            for name in names[k::len(cpus)]:
                assert (s.mnt / "d" / name).read_bytes() == (lower / "d" / name).read_bytes()
    after = ring(s)
    assert s.control("stats")["shim_lookups"]["files_opened"] - opened >= FILES - 10
    assert after["ring_forwarded"] - before["ring_forwarded"] <= 10
    assert after["ring_failures"] == 0


@pytest.mark.parametrize("data_path", ["daemon", "passthrough"])
def test_a_copy_up_retires_the_fd_a_queue_thread_opened(
        mount_session: MountFactory, tmp_path: Path, data_path: str) -> None:
    """Readers on every CPU read lower files (their queue threads open them)
    while a writer copies each up by appending: every read is the old content
    or the new, and once the writer is done every CPU reads the new one (no
    queue thread keeps serving a copied-up file from its lower fd).
    With passthrough the writer's open failed with EIO in ~1 run of 5 (shim
    25): a queue thread answered a reader's OPEN (the daemon path, cached
    I/O) while the daemon was deciding the writer's, and the writer's reply
    then named a backing, which the kernel refuses beside cached I/O."""
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(FILES):
        (lower / "d" / f"f{i:03}").write_bytes(b"old\n")
    s = ring_mount(mount_session, lower, *(["--passthrough"] if data_path == "passthrough" else []))
    names = sorted(os.listdir(s.mnt / "d"))
    cpus = sorted(os.sched_getaffinity(0))

    def reader(cpu: int) -> Callable[[], None]:
        def read_each() -> None:
            with on_cpu(cpu):
                for name in names:
                    seen = (s.mnt / "d" / name).read_bytes()
                    assert seen in (b"old\n", b"old\nnew\n"), (name, seen)
        return read_each

    def append_each() -> None:
        for name in names:
            with open(s.mnt / "d" / name, "ab") as f:
                f.write(b"new\n")

    assert while_looping([reader(cpu) for cpu in cpus], append_each) == []
    for cpu in cpus:
        with on_cpu(cpu):
            for name in names:
                assert (s.mnt / "d" / name).read_bytes() == b"old\nnew\n", name
    for name in names:
        assert (lower / "d" / name).read_bytes() == b"old\n"
    assert ring(s)["ring_failures"] == 0
