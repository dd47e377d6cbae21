"""A regular file's copy-up built as an unnamed file (O_TMPFILE) and linked
into place (copyup.py, tmpfile.py), and its base content the same way
(basecontent.py): a copy that fails halfway leaves nothing in the work dir,
a copy made again over an upper copy replaces it whole, a base copy kept
already stands, and the named-temp path still works where a file system
has no unnamed files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from astrid_fs.overlay import basecontent, copyup, tmpfile
from astrid_fs.overlay.whiteout import OverlayXattrs, get_origin

NAMES = OverlayXattrs("trusted" if os.geteuid() == 0 else "user")


def _session(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(lower, upper, work dir, session dir) of a session that keeps bases."""
    session = tmp_path / "session"
    lower, upper, tmp = tmp_path / "lower", session / "upper", session / "work" / "astrid"
    for d in (lower, upper, tmp):
        d.mkdir(parents=True)
    (session / "bases.sqlite").write_bytes(b"")
    return lower, upper, tmp, session


def _copy_up(lower: Path, upper: Path, tmp: Path, rel: str) -> None:
    copyup.copy_up(os.fsencode(lower / rel), os.fsencode(upper / rel), os.fsencode(tmp), NAMES,
                   os.fsencode(rel), sync=False)


def test_link_never_replaces(tmp_path: Path) -> None:
    fd = tmpfile.open_unnamed(os.fsencode(tmp_path))
    assert fd is not None  # ext4 and tmpfs, where the tests run, have O_TMPFILE
    try:
        os.write(fd, b"whole")
        (tmp_path / "taken").write_bytes(b"mine")
        with pytest.raises(FileExistsError):
            tmpfile.link(fd, os.fsencode(tmp_path / "taken"))
        tmpfile.link(fd, os.fsencode(tmp_path / "named"))
    finally:
        os.close(fd)
    assert (tmp_path / "taken").read_bytes() == b"mine"
    assert (tmp_path / "named").read_bytes() == b"whole"


def test_copy_up_links_a_whole_copy_and_leaves_no_temp(tmp_path: Path) -> None:
    lower, upper, tmp, session = _session(tmp_path)
    (lower / "a").write_bytes(b"project\n")
    os.utime(lower / "a", ns=(1_000_000_000, 2_000_000_000))
    _copy_up(lower, upper, tmp, "a")
    assert (upper / "a").read_bytes() == b"project\n"
    assert os.lstat(upper / "a").st_mtime_ns == 2_000_000_000
    assert os.lstat(upper / "a").st_nlink == 1
    origin = get_origin(os.fsencode(upper / "a"), NAMES)
    assert origin is not None and origin.path == "a"
    assert (session / "base-content" / "a").read_bytes() == b"project\n"
    assert os.lstat(session / "base-content" / "a").st_mtime_ns == 2_000_000_000
    assert os.listdir(tmp) == []


def test_a_copy_that_fails_halfway_leaves_nothing(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    lower, upper, tmp, _ = _session(tmp_path)
    (lower / "a").write_bytes(b"project\n")

    def no_space(fd: int, path: bytes) -> None:
        raise OSError(errno.ENOSPC, "no space")

    monkeypatch.setattr(tmpfile, "link", no_space)
    with pytest.raises(OSError):
        _copy_up(lower, upper, tmp, "a")
    assert not (upper / "a").exists()
    assert os.listdir(tmp) == []


def test_a_copy_made_again_replaces_the_upper_copy(tmp_path: Path) -> None:
    """unsynced.py re-copies a torn copy-up over the upper file it left."""
    lower, upper, tmp, _ = _session(tmp_path)
    (lower / "a").write_bytes(b"project\n")
    _copy_up(lower, upper, tmp, "a")
    (upper / "a").write_bytes(b"")  # torn
    _copy_up(lower, upper, tmp, "a")
    assert (upper / "a").read_bytes() == b"project\n"
    assert os.listdir(tmp) == []


def test_a_kept_base_stands(tmp_path: Path) -> None:
    lower, upper, tmp, session = _session(tmp_path)
    (lower / "a").write_bytes(b"first\n")
    _copy_up(lower, upper, tmp, "a")
    os.unlink(upper / "a")
    (lower / "a").write_bytes(b"second\n")
    _copy_up(lower, upper, tmp, "a")
    assert (upper / "a").read_bytes() == b"second\n"
    assert (session / "base-content" / "a").read_bytes() == b"first\n"
    assert os.listdir(tmp) == []


def test_without_unnamed_files_a_named_temp_does(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    lower, upper, tmp, session = _session(tmp_path)
    (lower / "d").mkdir()
    (upper / "d").mkdir()
    (lower / "d" / "a").write_bytes(b"project\n")
    monkeypatch.setattr(tmpfile, "open_unnamed", lambda dir_path: None)
    _copy_up(lower, upper, tmp, "d/a")
    assert (upper / "d" / "a").read_bytes() == b"project\n"
    assert get_origin(os.fsencode(upper / "d" / "a"), NAMES) is not None
    assert (session / "base-content" / "d" / "a").read_bytes() == b"project\n"
    _copy_up(lower, upper, tmp, "d/a")  # again, over it: replaced
    assert (upper / "d" / "a").read_bytes() == b"project\n"
    assert os.listdir(tmp) == []


def test_keep_bytes_outside_a_session_keeps_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    basecontent.keep_bytes(os.fsencode(work), b"a", b"content", 1)
    assert sorted(os.listdir(tmp_path)) == ["work"]
    assert os.listdir(work) == []
