"""The FUSE operations called directly, without a mount (as s3ql's
t3_fs_api does): precise checks of handles, lookup counts, fd ownership and
errno mapping, fast enough to run many. The mount tests (test_mount_posix,
test_workloads, ...) check the same paths through the kernel.

Stand-in: `pyfuse3.readdir_reply` needs a kernel request buffer; here a
collector with a size limit takes its place (the test says what it
accepts). Everything else is the real code over real directories.
"""

from __future__ import annotations

import errno
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyfuse3
import pytest

from astrid_fs.fuse.ops import FuseOps
from astrid_fs.fuse.shim import FH_INODE
from astrid_fs.overlay.layers import Layers
from astrid_fs.overlay.overlay import Overlay
from astrid_fs.overlay.whiteout import OverlayXattrs


@dataclass
class Ctx:
    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0o022


CTX = Ctx()


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for d in (lower, upper, work):
        d.mkdir()
    (lower / "README.md").write_text("hello\n")
    (lower / "src").mkdir()
    (lower / "src" / "a.py").write_text("a\n")
    (lower / "src" / "b.py").write_text("b\n")
    return lower, upper, work


def make_ops(layers: tuple[Path, Path, Path], *, no_open: bool) -> FuseOps:
    lower, upper, work = layers
    ns: Literal["trusted", "user"] = "trusted" if os.geteuid() == 0 else "user"
    overlay = Overlay(Layers(os.fsencode(lower), os.fsencode(upper), OverlayXattrs(ns)),
                      os.fsencode(work / "astrid"), redirects=ns == "trusted")
    (work / "astrid").mkdir()
    ops = FuseOps(overlay, lower_ttl=1.0)
    ops.no_open = ops.no_opendir = no_open
    return ops


def own_fds() -> int:
    # (garbage of earlier tests in this process closes its fds when the
    # collector runs: first, not between a test's two counts)
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


async def test_negative_lookup_and_errno_boundary(layers: tuple[Path, Path, Path]) -> None:
    ops = make_ops(layers, no_open=False)
    missing = await ops.lookup(1, b"nope", CTX)
    assert missing.st_ino == 0  # a cacheable negative entry, not an error
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await ops.mkdir(1, b"src", 0o755, CTX)
    assert raised.value.errno == errno.EEXIST
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await ops.getattr(123456789, CTX)
    assert raised.value.errno == errno.ESTALE  # an inode the kernel was told to forget


async def test_handles_close_at_release(layers: tuple[Path, Path, Path]) -> None:
    ops = make_ops(layers, no_open=False)
    before = own_fds()
    info, entry = await ops.create(1, b"new.txt", 0o644, os.O_RDWR, CTX)
    assert info.fh != 0
    assert await ops.write(info.fh, 0, b"data") == 4
    assert await ops.read(info.fh, 0, 10) == b"data"
    await ops.release(info.fh)
    assert own_fds() == before
    assert (layers[1] / "new.txt").read_bytes() == b"data"
    await ops.forget([(entry.st_ino, 1)])
    assert ops.files.counts() == {"inode_fds": 0, "pinned": 0, "handles": 0, "readers": 0}


async def test_no_open_create_hands_out_no_handle(layers: tuple[Path, Path, Path]) -> None:
    """Issue 9 item 1: with no_open the kernel sends no RELEASE; a CREATE
    handle would leak its fd. The inode's own (bounded) fd serves instead."""
    ops = make_ops(layers, no_open=True)
    ops.files.capacity = 4
    before = own_fds()
    inodes = []
    for i in range(20):
        info, entry = await ops.create(1, b"f%d" % i, 0o644, os.O_WRONLY, CTX)
        assert info.fh == 0
        fh = FH_INODE | entry.st_ino
        await ops.write(fh, 0, b"x%d" % i)
        inodes.append(entry.st_ino)
        await ops.release(0)  # a stray RELEASE of handle 0 must close nothing
    assert own_fds() <= before + 4
    for i, ino in enumerate(inodes):
        assert await ops.read(FH_INODE | ino, 0, 10) == b"x%d" % i
    await ops.forget([(ino, 1) for ino in inodes])
    assert own_fds() == before


async def test_unlinked_open_file_stays_readable_until_forget(
        layers: tuple[Path, Path, Path]) -> None:
    ops = make_ops(layers, no_open=True)
    before = own_fds()
    _, entry = await ops.create(1, b"tmp", 0o644, os.O_RDWR, CTX)
    fh = FH_INODE | entry.st_ino
    await ops.write(fh, 0, b"keep me")
    await ops.unlink(1, b"tmp", CTX)
    assert await ops.read(fh, 0, 7) == b"keep me"
    assert (await ops.getattr(entry.st_ino, CTX)).st_nlink == 0
    assert ops.files.counts()["pinned"] == 1
    await ops.forget([(entry.st_ino, 1)])
    assert own_fds() == before
    assert ops.files.counts()["pinned"] == 0


async def test_pinned_fds_never_evict_the_fd_in_use(layers: tuple[Path, Path, Path]) -> None:
    """Issue 9 item 2: pinned fds of deleted files filled the cache and the
    fd just opened was evicted (EBADF)."""
    ops = make_ops(layers, no_open=True)
    ops.files.capacity = 3
    held = []
    for i in range(6):  # more pinned files than the capacity
        _, entry = await ops.create(1, b"p%d" % i, 0o644, os.O_RDWR, CTX)
        await ops.write(FH_INODE | entry.st_ino, 0, b"p")
        await ops.unlink(1, b"p%d" % i, CTX)
        held.append(entry.st_ino)
    readme = await ops.lookup(1, b"README.md", CTX)
    assert await ops.read(FH_INODE | readme.st_ino, 0, 6) == b"hello\n"
    for ino in held:
        assert await ops.read(FH_INODE | ino, 0, 1) == b"p"


async def test_rename_over_open_directory_keeps_its_attributes(
        layers: tuple[Path, Path, Path]) -> None:
    """Issue 9 item 3."""
    ops = make_ops(layers, no_open=True)
    a = await ops.mkdir(1, b"a", 0o755, CTX)
    b = await ops.mkdir(1, b"b", 0o755, CTX)
    await ops.rename(1, b"a", 1, b"b", 0, CTX)
    gone = await ops.getattr(b.st_ino, CTX)
    assert gone.st_nlink == 0 and gone.st_mode == b.st_mode
    assert (await ops.lookup(1, b"b", CTX)).st_ino == a.st_ino


class Collector:
    """Stands in for the kernel's readdir buffer: takes `room` entries."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.names: list[bytes] = []
        self.next_id = 0  # the offset sent with the last entry taken

    def reply(self, token: Any, name: bytes, attr: Any, next_id: int) -> bool:
        if len(self.names) >= self.room:
            return False
        self.names.append(name)
        self.next_id = next_id
        return True


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    c = Collector(room=3)
    monkeypatch.setattr(pyfuse3, "readdir_reply", c.reply)
    yield c


async def test_readdir_counts_only_accepted_entries(layers: tuple[Path, Path, Path],
                                                    collector: Collector) -> None:
    ops = make_ops(layers, no_open=True)
    src = await ops.lookup(1, b"src", CTX)
    await ops.create(src.st_ino, b"c.py", 0o644, os.O_WRONLY, CTX)
    await ops.unlink(src.st_ino, b"a.py", CTX)
    await ops.readdir(FH_INODE | src.st_ino, 0, None)
    assert collector.names == [b".", b"..", b"b.py"]  # the buffer took three
    b_py = ops.table.get(next(n.ino for n in ops.table.nodes() if (src.st_ino, b"b.py")
                              in n.links))
    assert b_py.lookups == 1
    collector.room = 10
    await ops.readdir(FH_INODE | src.st_ino, collector.next_id, None)
    assert collector.names[3:] == [b"c.py"]  # merged: upper new, lower whited out
