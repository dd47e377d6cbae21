"""The first byte of a remote file through a mount (issue 11: "first byte no
slower than rclone's"): opening an object not read before and reading its head
costs one ranged GET of at most the read-ahead's first fetch (64 KiB), no HEAD
and no second GET, and one READ in the daemon -- on a default (no_open) mount
exactly as on a --passthrough mount, where OPEN reaches the FUSE layer (the
shim answers it). Counted at a real s3rver (its log has a line per request)
and in the daemon's request counters; never timed."""
# ruff: noqa: F811  (fixtures imported from s3_fixture are parameters here)

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.drivers.readahead import KIB
from astrid_fs.fuse.shim import shim_path
from tests.fs.s3_fixture import ACCESS_KEY, S3Target, s3, s3_server  # noqa: F401
from tests.fs.test_read_ahead import control
from tests.support.mounts import MountedSession, missing_part

MountFactory = Callable[..., MountedSession]
OBJECTS = 4
_SIZE = re.compile(r" 206 \S+ ([\d.]+)(b|kb|mb)\b")
_UNITS = {"b": 1, "kb": KIB, "mb": KIB * KIB}


@pytest.fixture(autouse=True)
def _root_and_shim() -> None:
    if os.geteuid() != 0 or shim_path() is None:
        missing_part("root and the built shim")


@pytest.mark.parametrize("extra", [(), ("--passthrough",)], ids=["no_open", "passthrough"])
def test_first_read_of_an_object_is_one_small_ranged_get(
        s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mount_session: MountFactory, extra: tuple[str, ...]) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S3RVER")
    bodies = {f"fb/obj{i}": os.urandom(1 << 20) for i in range(OBJECTS)}
    for key, body in bodies.items():
        s3.put(key, body)
    lower = tmp_path / "lower"
    lower.mkdir()
    table = s3.mount_table(tmp_path)
    s = mount_session(lower, None, "--mounts", str(table), *extra)
    root = s.mnt / "mnt" / "s3"
    with open(root / "fb" / "obj0", "rb", buffering=0) as f:  # lookups, listings warmed
        assert f.read(4096) == bodies["fb/obj0"][:4096]
    mark = s3.settle_log()
    before = control(s, "stats")["requests"]
    for i in range(1, OBJECTS):
        with open(root / "fb" / f"obj{i}", "rb", buffering=0) as f:
            assert f.read(4096) == bodies[f"fb/obj{i}"][:4096]
    after = control(s, "stats")["requests"]
    s3.settle_log()

    for i in range(1, OBJECTS):
        lines = s3.lines_for(f"fb/obj{i}", mark)
        # One request for the object (no HEAD: the listing gave size and
        # ETag), a ranged GET of the read-ahead's first fetch, no more.
        assert len(lines) == 1, lines
        got = _SIZE.search(lines[0])
        assert got is not None, lines
        assert float(got[1]) * _UNITS[got[2]] <= 64 * KIB, lines
    # One READ in the daemon per object (the kernel's first read-ahead
    # window), no further request of it in Python: no OPEN on either path
    # (no_open mode sends none; passthrough's is answered by the shim).
    reads = sum(after.get(k, 0) - before.get(k, 0)
                for k in ("remote_read_thread", "remote_read_inline"))
    assert reads == OBJECTS - 1, (before, after)
    assert after.get("open", 0) == before.get("open", 0), (before, after)


def _heads_of(s3: S3Target, key: str, since: int) -> int:
    """Requests of `key` answered 200 (not 206): HEADs, as the mount never GETs
    a whole object to read it."""
    return sum(1 for line in s3.lines_for(key, since) if " 200 " in line)


def test_opening_one_object_does_not_list_its_directory(
        s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mount_session: MountFactory) -> None:
    """A LOOKUP stats the name alone the first time in a directory not yet
    listed (one HEAD), and lists the directory from its second lookup on: a
    LIST of a large prefix (or of a server that lists by walking the bucket,
    as s3rver does) is not in the path of opening one file."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S3RVER")
    bodies = {f"big/obj{i}": os.urandom(4096) for i in range(3)}
    for key, body in bodies.items():
        s3.put(key, body)
    s3.put("other/k", b"k")
    lower = tmp_path / "lower"
    lower.mkdir()
    table = s3.mount_table(tmp_path)
    s = mount_session(lower, None, "--mounts", str(table))
    root = s.mnt / "mnt" / "s3"
    mark = s3.settle_log()  # (a new session lists the whole source once: its base)

    with open(root / "big" / "obj0", "rb", buffering=0) as f:
        assert f.read(4096) == bodies["big/obj0"]
    s3.settle_log()
    assert s3.listings_of("", mark) == 0  # the bucket root: "big" was stat'ed
    assert s3.listings_of("big/", mark) == 0
    assert _heads_of(s3, "big/obj0", mark) == 1

    # The directory's second lookup lists it; that listing answers the rest.
    mark = s3.settle_log()
    for i in (1, 2):
        with open(root / "big" / f"obj{i}", "rb", buffering=0) as f:
            assert f.read(4096) == bodies[f"big/obj{i}"]
    assert not (root / "big" / "missing").exists()
    s3.settle_log()
    assert s3.listings_of("big/", mark) == 1
    assert _heads_of(s3, "big/obj1", mark) == _heads_of(s3, "big/obj2", mark) == 0
    assert _heads_of(s3, "big/missing", mark) == 0  # 404s are not 200s: checked below too
    assert not [line for line in list(s3.server.log)[mark:] if "big/missing" in line]

    # rmdir of a directory only looked up fetches its listing: not empty.
    with pytest.raises(OSError) as info:
        os.rmdir(root / "other")
    assert info.value.errno == errno.ENOTEMPTY
    assert s3.get("other/k") == b"k"
