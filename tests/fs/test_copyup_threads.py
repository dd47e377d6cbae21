"""Copy-up's work done by a C thread (overlay/native/copyup_threads.c,
cthreads.py): unnamed files made ahead meet a really full file system and
make files again once space is back, and the thread works only while
making a file is slow."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from astrid_fs.overlay import cthreads, tmpfile
from tests.fs.conftest import unnamed_fds
from tests.fs.kernel_overlay import require_root


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with room for 16 inodes (its root is one)."""
    require_root()
    d = tmp_path / "tiny"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nr_inodes=16,size=1m", "tmpfs", str(d)],
                   check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_a_full_file_system_stops_the_thread_until_space_is_back(
        tiny_tmpfs: Path, native: bool) -> None:
    d = os.fsencode(tiny_tmpfs)
    ahead = tmpfile.make_ahead(d, size=4, native=native)
    try:
        assert ahead.wait_full(timeout=30), (ahead.stats(), cthreads.make_stats())
        fillers = []
        with pytest.raises(OSError) as full:
            for i in range(64):
                (tiny_tmpfs / f"filler{i}").write_bytes(b"")
                fillers.append(tiny_tmpfs / f"filler{i}")
        assert full.value.errno == errno.ENOSPC
        taken = [tmpfile.open_unnamed(d) for _ in range(4)]  # the thread wakes: full
        assert None not in taken
        assert not ahead.wait_full(timeout=30)
        assert ahead.stats()["stopped"] == os.strerror(errno.ENOSPC)
        with pytest.raises(OSError) as caught:  # full for requests too
            tmpfile.open_unnamed(d)
        assert caught.value.errno == errno.ENOSPC
        for fd in taken:
            assert fd is not None
            os.close(fd)  # (unnamed: their inodes are free again)
        fillers[0].unlink()
        fd = tmpfile.open_unnamed(d)  # made on request: the thread resumes
        assert fd is not None
        os.close(fd)
        assert ahead.wait_full(timeout=30), (ahead.stats(), cthreads.make_stats())
        stats = ahead.stats()
        assert "stopped" not in stats and stats["resumed"] >= 1 and stats["ready"] == 4
    finally:
        tmpfile.stop_ahead(d)
    assert unnamed_fds(tiny_tmpfs) == []


def test_the_threads_work_only_while_making_a_file_is_slow(
        tmp_path: Path, threads_always: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy, fed made-up timings (a slow disk cannot be had on demand:
    the bench reproduces one with mass deletions, docs/benchmarks.md): on a
    quick disk files are made on request; slow makings start the thread,
    quick ones rest it again.
    (The timings of the files this test makes on request are not fed in; the
    threads' own few cannot move the average across a threshold.)"""
    so = threads_always
    so.astrid_copyup_mode(0)
    monkeypatch.setattr(tmpfile.NativeAhead, "note", lambda self, ns: None)
    tmp = os.fsencode(tmp_path)
    for _ in range(64):
        so.astrid_make_note(5_000)  # 5 us a file
    ahead = tmpfile.make_ahead(tmp, size=4)
    assert isinstance(ahead, tmpfile.NativeAhead)
    try:
        fds = [tmpfile.open_unnamed(tmp) for _ in range(8)]
        assert ahead.stats()["made_on_request"] == 8 and ahead.stats()["ready"] == 0
        assert cthreads.make_stats()["threads_working"] is False
        for _ in range(64):
            so.astrid_make_note(500_000)  # 0.5 ms a file
        assert cthreads.make_stats()["threads_working"] is True
        fds.append(tmpfile.open_unnamed(tmp))  # wakes the thread
        assert ahead.wait_full(timeout=30), (ahead.stats(), cthreads.make_stats())
        for _ in range(64):
            so.astrid_make_note(5_000)
        assert cthreads.make_stats()["threads_working"] is False
        taken = [tmpfile.open_unnamed(tmp) for _ in range(6)]  # 4 left, then on request
        fds += taken
        assert ahead.stats()["taken"] == 4 and ahead.stats()["ready"] == 0
    finally:
        tmpfile.stop_ahead(tmp)
        for fd in fds:
            if fd is not None:
                os.close(fd)


def test_by_default_the_thread_makes_files_ahead_however_quick_the_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Since 2026-12-05 the thread works on a quick disk too (over io_uring a
    copy-up that made its own file was 8-19 % slower in three A/Bs of four:
    docs/benchmarks.md, "Copy-up's files made ahead on a quick disk too"):
    with the mode a daemon gets by default, quick makings (5 us a file) leave it working,
    copy-ups take files it made and it makes the next ones.
    `ASTRID_FS_COPYUP_THREADS=adaptive` is the earlier policy."""
    monkeypatch.delenv(cthreads.ENV, raising=False)
    so = cthreads.lib()
    assert so is not None, \
        "the copy-up threads library is not built or stale: run scripts/setup.sh"
    so.astrid_copyup_mode(cthreads.default_mode())
    for _ in range(64):
        so.astrid_make_note(5_000)
    assert cthreads.make_stats()["threads_working"] is True
    tmp = os.fsencode(tmp_path)
    ahead = tmpfile.make_ahead(tmp, size=4)
    assert isinstance(ahead, tmpfile.NativeAhead)
    fds: list[int | None] = []
    try:
        assert ahead.wait_full(timeout=10), (ahead.stats(), cthreads.make_stats())
        fds = [tmpfile.open_unnamed(tmp) for _ in range(4)]
        assert None not in fds
        stats = ahead.stats()
        assert stats["taken"] == 4 and stats["made_on_request"] == 0
        assert ahead.wait_full(timeout=10), (ahead.stats(), cthreads.make_stats())
    finally:
        tmpfile.stop_ahead(tmp)
        for fd in fds:
            if fd is not None:
                os.close(fd)
    monkeypatch.setenv(cthreads.ENV, "adaptive")
    assert cthreads.default_mode() == 0
