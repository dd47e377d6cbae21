"""The base-content pack (overlay/basepack.py): a session's kept base content
in one append-only file. Records read back as written; the first copy of a
path stands, the review's PUT replaces and DROP forgets; a pack open in one
process follows what another appends; a tail cut at any byte (a writer
killed inside its write, a crash) is cut off and nothing before it is lost;
a writer really killed -9 in a loop leaves a pack that reads and takes new
records; compaction keeps the live content and a mount holding the old file
follows it; a session made before the pack has its per-file copies taken in;
and copy-ups through a mount keep their bases in the pack, no file each,
across a kill -9 of the daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.overlay import basecontent
from astrid_fs.overlay.basepack import PACK_NAME, Pack, record
from tests.fs.conftest import kept_base, kept_body
from tests.fs.test_cli_mount import _wait_dead
from tests.support.mounts import MountedSession

MountSession = Callable[..., MountedSession]


def _pack(tmp_path: Path, sync: bool = False) -> Pack:
    pack = Pack.open(tmp_path / os.fsdecode(PACK_NAME), sync=sync)
    assert pack is not None
    return pack


def _records(path: Path) -> int:
    """How many whole records a fresh reader finds (and that it reaches the end)."""
    pack = Pack.open(path, create=False)
    assert pack is not None
    with pack, pack.locked():
        assert pack.end == os.path.getsize(path)
        return len(pack.live)


def test_records_read_back_and_the_first_copy_stands(tmp_path: Path) -> None:
    with _pack(tmp_path) as pack:
        assert pack.keep(b"a", b"first\n", 11)
        assert not pack.keep(b"a", b"second\n", 12)  # stands
        assert pack.keep(b"d/b", b"", 13)  # empty content is content
        assert pack.keep(b"d/e/c", b"\x00\xff" * 1000, 14)
        assert pack.read(b"a") is not None
        found = pack.read(b"a")
        assert found is not None and found[1] == b"first\n" and found[0].mtime_ns == 11
        found = pack.read(b"d/b")
        assert found is not None and found[1] == b""
        pack.put(b"a", b"replaced\n", 15)  # the review's: replaces
        pack.drop([b"d/e"])  # at and below
        assert sorted(pack.paths()) == [b"a", b"d/b"]
    with _pack(tmp_path) as again:  # a fresh reader: the same
        found = again.read(b"a")
        assert found is not None and found[1] == b"replaced\n" and found[0].mtime_ns == 15
        assert again.read(b"d/e/c") is None
        again.drop([b""])  # everything
        assert again.paths() == []
        assert again.keep(b"a", b"kept again\n", 16)  # a dropped path is kept anew
    assert kept_base(tmp_path, "a") == (b"kept again\n", 16)


def test_drop_matches_whole_components_only(tmp_path: Path) -> None:
    with _pack(tmp_path) as pack:
        for p in (b"d", b"d/x", b"dd", b"d.txt"):
            pack.keep(p, p, 1)
        size = os.path.getsize(tmp_path / os.fsdecode(PACK_NAME))
        pack.drop([b"nothing/here"])  # nothing kept there: nothing appended
        assert os.path.getsize(tmp_path / os.fsdecode(PACK_NAME)) == size
        pack.drop([b"d"])
        assert sorted(pack.paths()) == [b"d.txt", b"dd"]


def test_a_pack_follows_what_another_appends(tmp_path: Path) -> None:
    """The mount keeps its index in memory; the review's DROP and PUT reach
    it (the path can be kept anew, a PUT stands against a later KEEP)."""
    mount, review = _pack(tmp_path), _pack(tmp_path, sync=True)
    try:
        assert mount.keep(b"landed", b"v0\n", 1)
        assert mount.keep(b"merged", b"v0\n", 1)
        review.drop([b"landed"])  # it landed: its base goes
        review.put(b"merged", b"resolved base\n")
        assert mount.keep(b"landed", b"v1\n", 2)  # hidden again: kept anew
        assert not mount.keep(b"merged", b"v1\n", 2)
        found = mount.read(b"merged")
        assert found is not None and found[1] == b"resolved base\n"
        found = review.read(b"landed")
        assert found is not None and found[1] == b"v1\n"
    finally:
        mount.close()
        review.close()


def test_a_tail_cut_at_any_byte_is_cut_off_and_nothing_before_is_lost(
        tmp_path: Path) -> None:
    """What a writer killed inside its write(2) or a crash leaves: the last
    record torn anywhere. Every cut reads as the records before it, and the
    next append lands where a reader finds it."""
    whole = tmp_path / "whole.pack"
    with Pack.open(whole) as pack:  # type: ignore[union-attr]
        pack.keep(b"a", b"alpha\n", 1)
        pack.keep(b"b", b"beta\n", 2)
    before = os.path.getsize(whole)
    last = record(1, b"dir/c", b"gamma" * 20, 3)
    data = whole.read_bytes() + last
    cut_pack = tmp_path / "cut.pack"
    for cut in range(len(last)):
        cut_pack.write_bytes(data[:before + cut])
        with Pack.open(cut_pack) as pack:  # type: ignore[union-attr]
            assert sorted(pack.paths()) == [b"a", b"b"], cut
            assert os.path.getsize(cut_pack) == before, cut  # cut back to the boundary
            assert pack.keep(b"dir/c", b"again\n", 4)
        assert kept_body_at(cut_pack, b"dir/c") == b"again\n", cut
        assert kept_body_at(cut_pack, b"a") == b"alpha\n", cut


def kept_body_at(path: Path, key: bytes) -> bytes | None:
    with Pack.open(path, create=False) as pack:  # type: ignore[union-attr]
        found = pack.read(key)
    return None if found is None else found[1]


def test_garbage_after_the_last_record_and_a_torn_body(tmp_path: Path) -> None:
    """A crash can extend the file with zeros or leave a body's blocks
    unwritten while its header survived: zeros are cut off, and a body that
    fails its CRC reads as not kept (the merge then takes no base)."""
    with _pack(tmp_path) as pack:
        pack.keep(b"a", b"alpha\n", 1)
        pack.keep(b"b", b"beta beta\n", 2)
        b_at = pack.live[b"b"].offset
    path = tmp_path / os.fsdecode(PACK_NAME)
    with open(path, "r+b") as f:
        f.seek(b_at)
        f.write(b"\0\0\0\0")  # the body of b, torn
        f.seek(0, os.SEEK_END)
        f.write(b"\0" * 4096)  # a zero-filled tail
    with _pack(tmp_path) as pack:
        assert sorted(pack.paths()) == [b"a", b"b"]
        assert pack.read(b"b") is None
        found = pack.read(b"a")
        assert found is not None and found[1] == b"alpha\n"
    assert _records(path) == 2


def test_compaction_keeps_the_live_content_and_a_mount_follows_it(tmp_path: Path) -> None:
    """Dropped content piles up over a long session's commits: a review
    rewrites the pack as its live content once the file is mostly dead. The
    mount, holding the old file open, reads the MOVED record at its next
    keep and goes on in the new file, where a fresh reader finds it all."""
    path = tmp_path / os.fsdecode(PACK_NAME)
    mount, review = _pack(tmp_path), _pack(tmp_path, sync=True)
    try:
        for i in range(20):
            mount.keep(b"big/f%d" % i, os.urandom(64 << 10), i)
        mount.keep(b"small", b"live\n", 99)
        assert not review.compact(slack=256 << 10)  # nothing dead yet
        review.drop([b"big"])  # they landed
        before = os.path.getsize(path)
        assert review.compact(slack=256 << 10)
        assert os.path.getsize(path) < before // 10
        assert mount.keep(b"after", b"kept after\n", 100)  # follows the path
        assert not mount.keep(b"small", b"again\n", 101)  # the first copy still stands
    finally:
        mount.close()
        review.close()
    assert kept_base(tmp_path, "small") == (b"live\n", 99)
    assert kept_base(tmp_path, "after") == (b"kept after\n", 100)
    assert kept_base(tmp_path, "big/f3") is None
    assert _records(path) == 2
    assert not (tmp_path / (os.fsdecode(PACK_NAME) + ".new")).exists()


def test_a_compaction_that_dies_before_its_rename_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The review killed between the MOVED record and the rename: the path
    still names the old file, so MOVED is void and the mount stays on it."""
    mount, review = _pack(tmp_path), _pack(tmp_path, sync=True)
    try:
        mount.keep(b"dead", os.urandom(1 << 20), 1)
        mount.keep(b"live", b"live\n", 2)
        review.drop([b"dead"])

        def killed(src: object, dst: object) -> None:
            raise OSError("killed before the rename")

        monkeypatch.setattr(os, "rename", killed)
        with pytest.raises(OSError):
            review.compact(slack=0)
        monkeypatch.undo()
        assert mount.keep(b"later", b"later\n", 3)
    finally:
        mount.close()
        review.close()
    assert kept_body(tmp_path, "later") == b"later\n"
    assert kept_body(tmp_path, "live") == b"live\n"
    assert not (tmp_path / (os.fsdecode(PACK_NAME) + ".new")).exists()


_WRITER = textwrap.dedent("""
    import os, sys
    from astrid_fs.overlay.basepack import Pack
    pack = Pack.open(sys.argv[1])
    body = os.urandom(1 << 20)
    i = 0
    while True:
        pack.keep(b"f%d" % i, body, i)
        i += 1
""")


def test_a_writer_killed_9_mid_stream_leaves_a_pack_that_reads_and_appends(
        tmp_path: Path) -> None:
    """A real writer appending 1 MiB records in a loop, killed -9 three times
    at whatever point it reached: every time, the pack reads as whole records
    up to where it stopped, each body checks out, and appending goes on."""
    path = tmp_path / "pack"
    seen = 0
    for _ in range(3):
        # 9 MiB past where the last writer stopped holds at least 8 whole
        # records (1 MiB and a header each); 8 MiB may hold only 7 and part
        # of the eighth, which the kill may then leave torn.
        start = os.path.getsize(path) if path.exists() else 0
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)])
        try:
            deadline = time.monotonic() + 60
            while not path.exists() or os.path.getsize(path) < start + (9 << 20):
                assert time.monotonic() < deadline, "the writer made no progress"
                assert proc.poll() is None, "the writer died"
                os.sched_yield()
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        with Pack.open(path) as pack:  # type: ignore[union-attr]
            live = pack.paths()
            assert len(live) >= seen + 8
            for key in live:
                found = pack.read(key)
                assert found is not None and len(found[1]) == 1 << 20, key
                assert zlib.crc32(found[1]) == found[0].crc
            assert os.path.getsize(path) == pack.end
        seen = len(live)


def test_a_session_made_before_the_pack_has_its_files_taken_in(tmp_path: Path) -> None:
    """The per-file store (`SESSION/base-content/PATH`) of a session made by
    an older astrid-fs: the first pack opened takes the copies in, with their
    mtimes, keeps what the pack had (the first copy stands), and removes it."""
    session = tmp_path / "session"
    old = session / "base-content"
    (old / "d").mkdir(parents=True)
    (old / "a").write_bytes(b"old a\n")
    (old / "d" / "b").write_bytes(b"old b\n")
    os.utime(old / "d" / "b", ns=(1, 2_000_000_000))
    with Pack.open(session / os.fsdecode(PACK_NAME)) as pack:  # type: ignore[union-attr]
        pack.keep(b"a", b"pack a\n", 7)
    pack = basecontent.open_pack(os.fsencode(session), sync=True, create=False)
    assert pack is not None
    pack.close()
    assert not old.exists()
    assert kept_base(session, "d/b") == (b"old b\n", 2_000_000_000)
    assert kept_body(session, "a") == b"pack a\n"


def test_copy_ups_through_a_mount_keep_bases_in_the_pack_across_a_kill_9(
        tmp_path: Path, mount_session: MountSession) -> None:
    """200 copy-ups: each base is in the pack (no file of its own: the
    session dir gains none), the review reads them with no sync, and a
    kill -9 of the daemon keeps every one (page cache) for the next mount,
    which keeps more after them."""
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(300):
        (lower / "d" / f"f{i}").write_bytes(b"project %d\n" % i)
    s = mount_session(lower, None)
    for i in range(200):
        with open(s.mnt / "d" / f"f{i}", "ab") as f:
            f.write(b"session\n")
    assert not (s.root / os.fsdecode(basecontent.DIR_NAME)).exists()
    for i in range(200):
        assert kept_body(s.root, f"d/f{i}") == b"project %d\n" % i
    (row,) = json.loads(s.cli("status", "--json").stdout)["sessions"]
    os.kill(row["pid"], signal.SIGKILL)
    _wait_dead(row["pid"])
    s.cli("umount", s.name)
    s.mount()
    for i in range(200, 300):
        with open(s.mnt / "d" / f"f{i}", "ab") as f:
            f.write(b"session\n")
    for i in range(300):
        assert kept_body(s.root, f"d/f{i}") == b"project %d\n" % i
        assert (s.mnt / "d" / f"f{i}").read_bytes() == b"project %d\nsession\n" % i
    assert _records(s.root / os.fsdecode(PACK_NAME)) == 300
    s.umount()


def test_a_commit_of_thousands_of_paths_drops_them_in_one_append(tmp_path: Path) -> None:
    """A commit forgets every path it landed: 5,000 DROPs in one write
    (more than writev takes as pieces), and a fresh reader replays them."""
    paths = [b"src/d%d/f%d" % (i % 50, i) for i in range(6000)]
    with _pack(tmp_path) as mount, _pack(tmp_path, sync=True) as review:
        for p in paths:
            mount.keep(p, b"x", 1)
        review.drop(paths[:5000])
        review.drop([b"src/d7"])  # a directory: everything below it
        assert sorted(mount.paths()) == sorted(p for p in paths[5000:]
                                               if not p.startswith(b"src/d7/"))
    assert _records(tmp_path / os.fsdecode(PACK_NAME)) == 980


def test_a_hidden_files_base_is_read_whole_up_to_the_limit(tmp_path: Path) -> None:
    """`copy_from` (the base of a project file an `rm` or a rename over it
    hides) reads the file to its end, whatever fstat said a moment before,
    and at most LIMIT bytes."""
    for size in (0, 1, 4095, 1 << 20, basecontent.LIMIT, basecontent.LIMIT + 5):
        path = tmp_path / f"f{size}"
        body = os.urandom(size)
        path.write_bytes(body)
        assert basecontent.copy_from(os.fsencode(path))() == body[:basecontent.LIMIT], size
    grows = tmp_path / "grows"
    grows.write_bytes(b"a" * 10)
    read = basecontent.copy_from(os.fsencode(grows))
    with open(grows, "ab") as f:
        f.write(b"b" * 3 * (1 << 20))  # (larger than one read asks for)
    assert read() == b"a" * 10 + b"b" * 3 * (1 << 20)
