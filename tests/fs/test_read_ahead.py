"""The mount's read-ahead (shim part 7, fuse/shim.py `request_read_ahead`):
raised from the kernel's 128 KiB to 1 MiB once INIT is answered, so a
sequential read reaches the daemon in 1 MiB requests (a remote file's
read-ahead then sees large reads early). Needs root (sysfs) and the shim."""
# ruff: noqa: F811  (fixtures imported from s3_fixture are parameters here)

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from astrid_fs.fuse.shim import READ_AHEAD_KIB, shim_path
from tests.fs.s3_fixture import ACCESS_KEY, S3Target, s3, s3_server  # noqa: F401
from tests.support.mounts import MountedSession, missing_part

MountFactory = Callable[..., MountedSession]
MIB = 1 << 20


def read_ahead_kib(mnt: Path) -> int:
    dev = os.stat(mnt).st_dev
    return int(Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
               .read_text())


def control(s: MountedSession, op: str) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(s.root / "run" / "control.sock"))
        sock.sendall(json.dumps({"op": op}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            buf += sock.recv(65536)
    reply: dict[str, Any] = json.loads(buf)
    return reply


def daemon_read_calls(s: MountedSession) -> int:
    """The daemon's read system calls so far (/proc/PID/io `syscr`): one per
    FUSE request it takes from /dev/fuse, one per pread that serves a READ."""
    reply = control(s, "ping")
    io = Path(f"/proc/{reply['pid']}/io").read_text().splitlines()
    return int(dict(line.split(": ") for line in io)["syscr"])


@pytest.fixture(autouse=True)
def _root_and_shim() -> None:
    if os.geteuid() != 0 or shim_path() is None:
        missing_part("root (sysfs) and the built shim")


@pytest.mark.parametrize("extra", [(), ("--passthrough",)])
def test_mount_reads_ahead_one_mib(mount_session: MountFactory, tmp_path: Path,
                                   extra: tuple[str, ...]) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    body = os.urandom(16 * MIB)
    (lower / "big").write_bytes(body)
    s = mount_session(lower, None, *extra)
    assert read_ahead_kib(s.mnt) == READ_AHEAD_KIB == 1024
    before = daemon_read_calls(s)
    with open(s.mnt / "big", "rb", buffering=0) as f:
        got = b"".join(iter(lambda: f.read(128 * 1024), b""))
    assert got == body
    # A lower file read-only is on the daemon path either way: 16 MiB in
    # requests of up to 1 MiB (about 2 x 16 read calls: the request and its
    # pread; over io_uring, ASTRID_FS_IO_URING=1, only the preads), where
    # 128 KiB requests would take 2 x 128.
    assert 16 <= daemon_read_calls(s) - before <= 100


def test_remote_reads_held_by_the_driver_need_no_worker_thread(
        s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mount_session: MountFactory) -> None:
    # A READ of bytes the driver already holds (block cache, finished
    # read-ahead) is answered on the FUSE thread (fuse/ops.py _remote_read);
    # only reads that may wait on the network take a worker-thread hop.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S3RVER")
    body = os.urandom(12 * MIB)
    s3.put("big.bin", body)
    lower = tmp_path / "lower"
    lower.mkdir()
    table = s3.mount_table(tmp_path)
    s = mount_session(lower, None, "--mounts", str(table))
    path = s.mnt / "mnt" / "s3" / "big.bin"
    with open(path, "rb", buffering=0) as f:
        assert b"".join(iter(lambda: f.read(128 * 1024), b"")) == body
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # the kernel's pages go
    before = control(s, "stats")["requests"]
    with open(path, "rb", buffering=0) as f:
        assert b"".join(iter(lambda: f.read(128 * 1024), b"")) == body
    after = control(s, "stats")["requests"]
    assert after.get("remote_read_inline", 0) - before.get("remote_read_inline", 0) >= 12
    assert after.get("remote_read_thread", 0) == before.get("remote_read_thread", 0)
