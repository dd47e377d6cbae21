"""The mount daemon's malloc uses transparent huge pages (fuse/shim.py
`daemon_env`): a remote file's read-ahead buffers (up to 8 MiB each, kept by
the block cache) then cost a page fault per 2 MiB, not per 4 KiB -- a fifth
of the daemon's CPU in an S3 read before (docs/benchmarks.md). Checked on a
real mount reading from a real s3rver: the daemon's environment carries the
tunable and its anonymous memory is in huge pages after the read. Never
timed."""
# ruff: noqa: F811  (fixtures imported from s3_fixture are parameters here)

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.drivers.readahead import MIB
from astrid_fs.fuse.shim import HUGE_PAGE_MALLOC, daemon_env
from tests.fs.s3_fixture import ACCESS_KEY, S3Target, s3, s3_server  # noqa: F401
from tests.support.mounts import MountedSession, missing_part

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_daemon_env_adds_the_tunable_and_keeps_the_callers() -> None:
    assert daemon_env({})["GLIBC_TUNABLES"] == HUGE_PAGE_MALLOC
    mixed = daemon_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"]
    assert mixed == f"glibc.malloc.arena_max=2:{HUGE_PAGE_MALLOC}"
    # A caller who says otherwise is obeyed.
    assert daemon_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})["GLIBC_TUNABLES"] == \
        "glibc.malloc.hugetlb=0"


def _anon_huge_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    raise AssertionError(f"no AnonHugePages in /proc/{pid}/smaps_rollup")


def test_remote_read_buffers_are_huge_pages(
        s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mount_session: Callable[..., MountedSession]) -> None:
    if os.geteuid() != 0:
        missing_part("root (FUSE mounts)")
    if "[never]" in THP.read_text():
        missing_part("transparent huge pages (off on this kernel)")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S3RVER")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    body = random.Random(3).randbytes(48 * MIB)
    s3.put("big.bin", body)
    lower = tmp_path / "lower"
    lower.mkdir()
    table = s3.mount_table(tmp_path)
    s = mount_session(lower, None, "--mounts", str(table))
    pid = int(s.control("ping")["pid"])
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"GLIBC_TUNABLES={HUGE_PAGE_MALLOC}".encode() in environ
    with open(s.mnt / "mnt" / "s3" / "big.bin", "rb", buffering=0) as f:
        digest = hashlib.file_digest(f, "sha256").digest()
    assert digest == hashlib.sha256(body).digest()
    # The read-ahead's windows (the block cache keeps them) are in huge pages;
    # a daemon started without the tunable has none here (THP is "madvise").
    assert _anon_huge_kib(pid) >= 2048
