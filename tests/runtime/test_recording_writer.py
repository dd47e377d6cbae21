"""The recording's writer process (recorder/writer.py) and the store's lock: what a
kernel crash, a Ctrl-C at the terminal and a dead writer leave. Real SurrealDB
(`surrealkv://` on disk), real processes; no sleeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from astrid_runtime.recorder import store as store_mod
from astrid_runtime.recorder.chunk import RecordingError, Rows
from astrid_runtime.recorder.settings import RecordingSettings
from astrid_runtime.recorder.store import RecordingBusy, RecordingStore
from astrid_runtime.recorder.writer import StoreProcess

HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, (sys.argv[2] + "\\n").encode())
print("held", flush=True)
sys.stdin.read()
"""


def rows(first: int, n: int) -> Rows:
    return Rows([(s, 0.0, "t", "client", None, b"x", "p") for s in range(first, first + n)], [])


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)  # reaped: no such process now (pid reuse within a test: no)


def hold_lock(path: Path, principal: int) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(principal)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_writer_process_round_trip_and_reopen(tmp_path: Path) -> None:
    store = StoreProcess(RecordingSettings(), tmp_path)
    try:
        assert store.pid != os.getpid()
        store.write(rows(1, 5))
        store.write(rows(6, 5))
        assert [e.seq for e in store.read(3, 7).events] == [3, 4, 5, 6, 7]
        assert store.stats() == {"chunks": 2, "events": 10, "last_seq": 10}
    finally:
        store.close()
    assert store.last_seq() == 10
    again = RecordingStore(f"surrealkv://{tmp_path / 'recording'}")
    try:
        assert [e.seq for e in again.read().events] == list(range(1, 11))
    finally:
        again.close()


def test_writer_ignores_ctrl_c(tmp_path: Path) -> None:
    """A Ctrl-C reaches the terminal's whole process group; the kernel then flushes and
    closes the store itself, so the writer must still be there to take it."""
    store = StoreProcess(RecordingSettings(), tmp_path)
    try:
        os.kill(store.pid, signal.SIGINT)
        store.write(rows(1, 3))  # answered after the signal was delivered
        assert store.stats()["events"] == 3
    finally:
        store.close()


def test_dead_writer_is_one_line_error(tmp_path: Path) -> None:
    store = StoreProcess(RecordingSettings(), tmp_path)
    try:
        store.write(rows(1, 3))
        os.kill(store.pid, signal.SIGKILL)
        with pytest.raises(RecordingError) as e:
            store.write(rows(4, 3))
        message = str(e.value)
        assert f"writer (pid {store.pid}) is gone" in message and "\n" not in message
    finally:
        store.close()
    # what it had acknowledged is on disk
    again = RecordingStore(f"surrealkv://{tmp_path / 'recording'}")
    try:
        assert [e.seq for e in again.read().events] == [1, 2, 3]
    finally:
        again.close()


def test_open_errors_come_back_as_recording_errors(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match=r"cannot open the recording ws://127\.0\.0\.1:9"):
        StoreProcess(RecordingSettings(url="ws://127.0.0.1:9"), tmp_path)
    holder = hold_lock(tmp_path / "recording.lock", os.getpid())  # a live kernel
    try:
        with pytest.raises(RecordingBusy):
            StoreProcess(RecordingSettings(), tmp_path)
    finally:
        holder.communicate("")


def test_lock_of_a_live_principal_is_busy_at_once(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path / "recording.lock", os.getpid())
    try:
        with pytest.raises(RecordingBusy, match="held by a running kernel"):
            RecordingStore(f"surrealkv://{tmp_path / 'recording'}")
    finally:
        holder.communicate("")


def test_lock_of_a_dead_principal_is_waited_for(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer finishing the chunks of a kernel killed with -9 holds the lock for a
    moment: `astrid log` (or the next kernel) waits for it instead of failing."""
    holder = hold_lock(tmp_path / "recording.lock", dead_pid())
    waiting = threading.Event()
    real_sleep = store_mod.time.sleep

    def sleep(seconds: float) -> None:  # the opener's poll: it is waiting now
        waiting.set()
        real_sleep(seconds)

    monkeypatch.setattr(store_mod.time, "sleep", sleep)
    opened: list[object] = []

    def open_it() -> None:
        try:
            opened.append(RecordingStore(f"surrealkv://{tmp_path / 'recording'}"))
        except Exception as e:
            opened.append(e)

    opener = threading.Thread(target=open_it)
    opener.start()
    try:
        assert waiting.wait(60), "the opener never waited for the dead kernel's writer"
    finally:
        holder.communicate("")  # the writer finishes: the lock is released
        opener.join(60)
    assert len(opened) == 1 and isinstance(opened[0], RecordingStore), opened
    opened[0].close()


def test_lock_of_a_dead_principal_gives_up_after_the_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "ORPHAN_WAIT_S", 0.0)
    holder = hold_lock(tmp_path / "recording.lock", dead_pid())
    try:
        with pytest.raises(RecordingBusy):
            RecordingStore(f"surrealkv://{tmp_path / 'recording'}")
    finally:
        holder.communicate("")
