"""Sparse files and modern I/O through the mount (issue 9, item 7): SEEK_DATA /
SEEK_HOLE, fallocate modes and copy_file_range (O_TMPFILE: test_tmpfile.py), each compared with
what the upper filesystem (ext4, a plain directory beside the session) does.

These need the FUSE shim at version 5 (scripts/setup.sh builds it): pyfuse3
has no LSEEK / FALLOCATE / COPY_FILE_RANGE handlers of its own. The last
tests call the callbacks (fuse/extra_ops.py) directly, without a mount.
"""

# ruff: noqa: F811  (fixtures imported from s3_fixture are parameters here)
from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import astrid_fs.fuse.extra_ops as extra_ops_module
from astrid_fs.fuse.extra_ops import ExtraOps
from astrid_fs.fuse.ops import FuseOps
from astrid_fs.fuse.shim import FH_INODE
from astrid_fs.overlay.inodes import ROOT_INO
from astrid_fs.overlay.layers import Layers
from astrid_fs.overlay.overlay import Overlay
from astrid_fs.overlay.whiteout import OverlayXattrs
from tests.fs.s3_fixture import ACCESS_KEY, S3Target, s3, s3_server  # noqa: F401
from tests.support.mounts import MountedSession, drop_cached_pages, hash_tree

Mount = Callable[..., MountedSession]

MiB = 1 << 20
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    """fallocate(2): 0 or the errno."""
    return 0 if _libc.fallocate(fd, mode, offset, length) == 0 else ctypes.get_errno()



def requests(s: MountedSession) -> dict[str, int]:
    counts = s.control("stats")["requests"]
    assert isinstance(counts, dict)
    return counts


def daemon_read_bytes(s: MountedSession) -> int:
    """Bytes the daemon has read with read(2)-family calls so far (/proc/PID/io)."""
    pid = s.control("ping")["pid"]
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


def make_sparse(path: Path, size: int, extents: list[tuple[int, bytes]]) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for offset, data in extents:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def layout(path: Path) -> list[tuple[int, int]]:
    """The data extents SEEK_DATA / SEEK_HOLE report, as (start, end) pairs."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        out: list[tuple[int, int]] = []
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                assert e.errno == errno.ENXIO
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
        return out
    finally:
        os.close(fd)


# Two 64 KiB data extents in a 64 MiB file (extent-aligned for ext4).
SPARSE_SIZE = 64 * MiB
EXTENTS = [(4 * MiB, b"a" * 65536), (40 * MiB, b"b" * 65536)]


@pytest.fixture
def sparse_lower(tmp_path: Path) -> Path:
    lower = tmp_path / "lower"
    lower.mkdir()
    make_sparse(lower / "sparse", SPARSE_SIZE, EXTENTS)
    return lower


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    """A plain directory on the same filesystem as the session's upper."""
    d = tmp_path / "plain"
    d.mkdir()
    return d


# ---- lseek ------------------------------------------------------------------


def test_seek_data_and_hole_show_the_holes_of_a_lower_file(
        sparse_lower: Path, mount_session: Mount) -> None:
    before = hash_tree(sparse_lower)
    s = mount_session(sparse_lower)
    assert layout(s.mnt / "sparse") == layout(sparse_lower / "sparse")
    assert layout(s.mnt / "sparse") == [(4 * MiB, 4 * MiB + 65536),
                                        (40 * MiB, 40 * MiB + 65536)]
    fd = os.open(s.mnt / "sparse", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            os.lseek(fd, 41 * MiB, os.SEEK_DATA)  # only a hole up to EOF
        assert e.value.errno == errno.ENXIO
        assert os.lseek(fd, 41 * MiB, os.SEEK_HOLE) == 41 * MiB  # in a hole
        with pytest.raises(OSError) as e:
            os.lseek(fd, SPARSE_SIZE, os.SEEK_HOLE)  # at EOF
        assert e.value.errno == errno.ENXIO
    finally:
        os.close(fd)
    # Asking is not writing: no copy-up, the lower untouched.
    assert not (s.upper / "sparse").exists()
    s.umount()
    assert hash_tree(sparse_lower) == before


def test_seek_data_and_hole_on_a_file_written_through_the_mount(
        mount_session: Mount, plain: Path) -> None:
    s = mount_session()
    for root in (s.mnt, plain):
        make_sparse(root / "new", 8 * MiB, [(2 * MiB, b"x" * 4096), (7 * MiB, b"y" * 100)])
    assert layout(s.mnt / "new") == layout(plain / "new")
    assert layout(s.mnt / "new")[0][0] == 2 * MiB


def test_cp_of_a_sparse_file_reads_only_its_data(
        sparse_lower: Path, mount_session: Mount, tmp_path: Path) -> None:
    s = mount_session(sparse_lower)
    read_before = daemon_read_bytes(s)
    out = tmp_path / "out"
    subprocess.run(["cp", "--sparse=always", str(s.mnt / "sparse"), str(out)], check=True)
    # Without SEEK_DATA the daemon reads all 64 MiB for cp; with it, the
    # two 64 KiB extents (plus FUSE request traffic).
    assert daemon_read_bytes(s) - read_before < 8 * MiB
    assert out.read_bytes() == (sparse_lower / "sparse").read_bytes()
    assert layout(out) == layout(sparse_lower / "sparse")


# ---- fallocate --------------------------------------------------------------

FALLOCATE_CASES = {
    "allocate": (0, 3 * MiB, MiB),                      # extends the file
    "allocate-inside": (0, 256 * 1024, 64 * 1024),
    "keep-size": (FALLOC_FL_KEEP_SIZE, 3 * MiB, MiB),    # blocks beyond EOF
    "punch-hole": (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 3 * 4096),
    "punch-unaligned": (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1000, 20000),
    "zero-range": (FALLOC_FL_ZERO_RANGE, 8192, 3 * MiB),
    "zero-range-keep": (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 8192, 3 * MiB),
    "punch-without-keep-size": (FALLOC_FL_PUNCH_HOLE, 0, 4096),  # EOPNOTSUPP on ext4
}


def _fallocate_outcome(path: Path, mode: int, offset: int, length: int, backing: Path
                       ) -> tuple[int, int, bytes, list[tuple[int, int]], int]:
    fd = os.open(path, os.O_RDWR)
    try:
        err = fallocate(fd, mode, offset, length)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    # Layout before content, with the backing file's pages out of its cache:
    # ext4 reports an unwritten extent (what fallocate allocates) as data once
    # its pages are cached, and which pages of the upper file are cached
    # depends on when the daemon's threads touched it (one run in ten had the
    # zeroed range cached through the mount). st_blocks: what fallocate
    # allocated or freed, also beyond EOF.
    drop_cached_pages(backing)
    extents = layout(path)
    return err, st.st_size, path.read_bytes(), extents, st.st_blocks


@pytest.mark.parametrize("case", sorted(FALLOCATE_CASES))
def test_fallocate_modes_behave_as_on_the_upper_filesystem(
        case: str, mount_session: Mount, plain: Path) -> None:
    mode, offset, length = FALLOCATE_CASES[case]
    s = mount_session()
    content = os.urandom(256 * 1024)
    (s.mnt / "f").write_bytes(content)
    (plain / "f").write_bytes(content)
    got = _fallocate_outcome(s.mnt / "f", mode, offset, length, s.upper / "f")
    want = _fallocate_outcome(plain / "f", mode, offset, length, plain / "f")
    assert got == want
    # The upper copy holds exactly what the mount shows.
    assert (s.upper / "f").read_bytes() == want[2]


def test_punch_hole_in_a_lower_file_copies_it_up_and_leaves_the_lower(
        mount_session: Mount, tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    content = os.urandom(MiB)
    (lower / "f").write_bytes(content)
    before = hash_tree(lower)
    s = mount_session(lower)
    fd = os.open(s.mnt / "f", os.O_RDWR)
    try:
        assert fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 64 * 1024,
                         128 * 1024) == 0
    finally:
        os.close(fd)
    want = content[:64 * 1024] + bytes(128 * 1024) + content[192 * 1024:]
    assert (s.mnt / "f").read_bytes() == want
    assert (s.upper / "f").read_bytes() == want
    assert layout(s.mnt / "f") == [(0, 64 * 1024), (192 * 1024, MiB)]
    s.umount()
    assert hash_tree(lower) == before
    s.mount()
    assert (s.mnt / "f").read_bytes() == want


@pytest.mark.parametrize("mode", [FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE])
def test_collapse_and_insert_range_are_refused_by_the_kernel_fuse_client(
        mode: int, mount_session: Mount, plain: Path) -> None:
    # ext4 supports both, but the kernel's FUSE client answers EOPNOTSUPP
    # for any mode other than KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE before
    # the request reaches a daemon (fs/fuse/file.c, fuse_file_fallocate).
    s = mount_session()
    content = os.urandom(4 * 65536)
    for root in (s.mnt, plain):
        (root / "f").write_bytes(content)
    fd = os.open(plain / "f", os.O_RDWR)
    try:
        assert fallocate(fd, mode, 65536, 65536) == 0  # the upper fs could
    finally:
        os.close(fd)
    fd = os.open(s.mnt / "f", os.O_RDWR)
    try:
        assert fallocate(fd, mode, 65536, 65536) == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    assert (s.mnt / "f").read_bytes() == content
    assert "fallocate" not in requests(s)


# ---- copy_file_range ------------------------------------------------------


def test_copy_file_range_from_a_lower_file_keeps_holes_and_the_lower(
        sparse_lower: Path, mount_session: Mount) -> None:
    before = hash_tree(sparse_lower)
    s = mount_session(sparse_lower)
    src = os.open(s.mnt / "sparse", os.O_RDONLY)
    dst = os.open(s.mnt / "copy", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        done = os.copy_file_range(src, dst, 65536 + 100, 4 * MiB - 100, 10)
    finally:
        os.close(src)
        os.close(dst)
    assert done == 65536 + 100
    want = bytes(10) + bytes(100) + b"a" * 65536
    assert (s.mnt / "copy").read_bytes() == want
    assert (s.upper / "copy").read_bytes() == want
    assert not (s.upper / "sparse").exists()
    s.umount()
    assert hash_tree(sparse_lower) == before


def test_copy_file_range_into_a_lower_file_copies_it_up(
        mount_session: Mount, tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "src").write_bytes(b"S" * 10000)
    (lower / "dst").write_bytes(b"d" * 5000)
    before = hash_tree(lower)
    s = mount_session(lower)
    src = os.open(s.mnt / "src", os.O_RDONLY)
    dst = os.open(s.mnt / "dst", os.O_WRONLY)
    try:
        assert os.copy_file_range(src, dst, 3000, 0, 4000) == 3000
    finally:
        os.close(src)
        os.close(dst)
    want = b"d" * 4000 + b"S" * 3000
    assert (s.mnt / "dst").read_bytes() == want
    assert os.stat(s.mnt / "dst").st_size == 7000
    assert (s.upper / "dst").read_bytes() == want
    s.umount()
    assert hash_tree(lower) == before


def test_copy_file_range_within_one_file(mount_session: Mount, plain: Path) -> None:
    s = mount_session()
    content = os.urandom(200000)
    results = []
    for root in (s.mnt, plain):
        (root / "f").write_bytes(content)
        fd = os.open(root / "f", os.O_RDWR)
        try:
            results.append(os.copy_file_range(fd, fd, 50000, 0, 150000))
        finally:
            os.close(fd)
    assert results[0] == results[1]
    assert (s.mnt / "f").read_bytes() == (plain / "f").read_bytes()


# ---- files still in a remote tree (S3) ------------------------------------------


def test_remote_files_have_no_holes_and_copy_through_the_kernel(
        s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mount_session: Mount) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    body = os.urandom(100000)
    s3.put("data/blob", body)
    table = s3.mount_table(tmp_path)
    lower = tmp_path / "project"
    lower.mkdir()
    s = mount_session(lower, None, "--mounts", str(table))
    blob = s.mnt / "mnt" / "s3" / "data" / "blob"
    fd = os.open(blob, os.O_RDWR)
    try:
        # All data, as the kernel's generic lseek would say; nothing fetched.
        assert os.lseek(fd, 10, os.SEEK_DATA) == 10
        assert os.lseek(fd, 10, os.SEEK_HOLE) == 100000
        with pytest.raises(OSError) as e:
            os.lseek(fd, 100000, os.SEEK_DATA)
        assert e.value.errno == errno.ENXIO
        # A write-type op would have to fetch the object on the FUSE loop.
        assert fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 4096) == errno.EOPNOTSUPP
        out = os.open(s.mnt / "copy", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            assert os.copy_file_range(fd, out, 100000, 0, 0) == 100000
        finally:
            os.close(out)
    finally:
        os.close(fd)
    assert (s.mnt / "copy").read_bytes() == body
    assert not (s.upper / "mnt" / "s3" / "data" / "blob").exists()
    assert s3.get("data/blob") == body


# ---- the callbacks without a mount ----------------------------------------------


@pytest.fixture
def direct(tmp_path: Path) -> tuple[ExtraOps, FuseOps, Path]:
    """ExtraOps over an overlay of a lower dir holding a sparse `f`, no mount."""
    for name in ("lower", "upper", "tmp"):
        (tmp_path / name).mkdir()
    make_sparse(tmp_path / "lower" / "f", 2 * MiB, [(MiB, b"x" * 4096)])
    layers = Layers(os.fsencode(tmp_path / "lower"), os.fsencode(tmp_path / "upper"),
                    OverlayXattrs("trusted"))
    ops = FuseOps(Overlay(layers, os.fsencode(tmp_path / "tmp"), redirects=True),
                  lower_ttl=1.0)
    return ExtraOps(ops), ops, tmp_path


async def _ino(ops: FuseOps, name: bytes) -> int:
    entry = await ops.lookup(ROOT_INO, name, None)
    ino: int = entry.st_ino
    return ino


async def test_callbacks_answer_by_inode_without_copying_up_for_lseek(
        direct: tuple[ExtraOps, FuseOps, Path]) -> None:
    extra, ops, root = direct
    fh = FH_INODE | await _ino(ops, b"f")
    assert extra.lseek(fh, 0, os.SEEK_DATA) == MiB
    assert extra.lseek(fh, MiB, os.SEEK_HOLE) == MiB + 4096
    assert extra.lseek(fh, MiB + 4096, os.SEEK_DATA) == -errno.ENXIO
    assert not (root / "upper" / "f").exists()
    assert extra.fallocate(fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MiB, 4096) == 0
    assert (root / "upper" / "f").stat().st_size == 2 * MiB
    assert extra.lseek(fh, 0, os.SEEK_DATA) == -errno.ENXIO
    assert (root / "lower" / "f").read_bytes()[MiB:MiB + 1] == b"x"


async def test_callbacks_never_raise(direct: tuple[ExtraOps, FuseOps, Path],
                                     monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    extra, ops, _ = direct
    fh = FH_INODE | await _ino(ops, b"f")
    forgotten = FH_INODE | 987654
    assert extra.lseek(forgotten, 0, os.SEEK_DATA) == -errno.ESTALE
    assert extra.fallocate(forgotten, 0, 0, 1) == -errno.ESTALE
    assert extra.copy_file_range(fh, 0, forgotten, 0, 1, 0) == -errno.ESTALE
    assert extra.copy_file_range(fh, 0, fh, 4096, 1, 1) == -errno.EINVAL
    assert extra.lseek(0, 0, os.SEEK_DATA) == -errno.EBADF  # not a handle we gave out
    assert extra.fallocate(fh, 0x4000, 0, 1) < 0  # an unknown mode: the upper fs says

    def no_fallocate(fd: int, mode: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSYS, "not here")

    # ENOSYS would switch FALLOCATE off for the whole mount: never answer it.
    monkeypatch.setattr(extra_ops_module, "_fallocate", no_fallocate)
    assert extra.fallocate(fh, 0, 0, 1) == -errno.EOPNOTSUPP

    def broken(fd: int, mode: int, offset: int, length: int) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(extra_ops_module, "_fallocate", broken)
    assert extra.fallocate(fh, 0, 0, 1) == -errno.EIO
    assert "fallocate" in caplog.text


def test_without_the_extra_ops_shim_nothing_is_registered(
        direct: tuple[ExtraOps, FuseOps, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, ops, _ = direct
    monkeypatch.setattr(extra_ops_module, "shim_version", lambda: 4)
    assert extra_ops_module.register(ops) is None


def _copies(s: MountedSession) -> dict[str, int]:
    counts = s.control("stats")["shim_writes"]
    assert "copies" in counts, "COPY_FILE_RANGE in C (shim version 33) is not loaded"
    return {"c": int(counts["copies"]), "python": int(requests(s).get("copy_file_range", 0))}


def test_copies_between_files_the_daemon_holds_are_made_in_c(
        mount_session: Mount, tmp_path: Path) -> None:
    """`cp` copies with copy_file_range(2): a ctypes callback into the daemon
    per 64 MiB. When the destination is an upper file the daemon holds a
    read-write fd for and the source a file it holds an fd for, or a lower
    file the shim found, the shim copies between those fds (part 21): the
    same bytes, at the offsets asked, the lower layer untouched; a lower
    destination is the daemon's (it copies it up first), and so is the first
    copy from a lower file the daemon found and holds no fd for (a merged
    directory's: the callback opens it, later copies are the shim's)."""
    lower = tmp_path / "lower"
    (lower / "proj").mkdir(parents=True)  # (a directory only the lower shows)
    body = os.urandom(300_000)
    (lower / "proj" / "src").write_bytes(body)
    (lower / "proj" / "dst").write_bytes(b"d" * 5000)
    before = hash_tree(lower)
    s = mount_session(lower, None, "--no-passthrough")
    proj = s.mnt / "proj"
    start = _copies(s)
    src = os.open(proj / "src", os.O_RDONLY)
    out = os.open(s.mnt / "new", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert os.copy_file_range(src, out, len(body)) == len(body)  # a whole file, as cp
        assert os.copy_file_range(src, out, 1000, 5, 400_000) == 1000  # offsets given
        # short at the source's end; at the copy's own position (its end)
        assert os.copy_file_range(src, out, 10, len(body) - 4) == 4
    finally:
        os.close(src)
        os.close(out)
    want = body + body[-4:] + bytes(400_000 - len(body) - 4) + body[5:1005]
    assert (s.mnt / "new").read_bytes() == want
    assert (s.upper / "new").read_bytes() == want
    now = _copies(s)
    assert (now["c"] - start["c"], now["python"] - start["python"]) == (3, 0)
    # From an upper file too; into a lower one: copied up by the daemon first.
    a = os.open(s.mnt / "new", os.O_RDONLY)
    b = os.open(proj / "dst", os.O_WRONLY)
    try:
        assert os.copy_file_range(a, b, 3000, 0, 4000) == 3000
    finally:
        os.close(a)
        os.close(b)
    assert (proj / "dst").read_bytes() == b"d" * 4000 + want[:3000]
    assert (s.upper / "proj" / "dst").read_bytes() == b"d" * 4000 + want[:3000]
    assert _copies(s)["python"] - start["python"] == 1
    subprocess.run(["cp", str(proj / "src"), str(s.mnt / "cp-copy")], check=True)
    assert (s.mnt / "cp-copy").read_bytes() == body
    s.umount()
    assert hash_tree(lower) == before
