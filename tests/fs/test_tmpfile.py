"""O_TMPFILE through the mount (issue 9, item 7).

Before the shim's part 8 the kernel's FUSE_TMPFILE reached a libfuse with
no handler, got ENOSYS, and every open(dir, O_TMPFILE) on the mount failed
with EOPNOTSUPP for the rest of its life. Now an unnamed file lives in the
session's upper layer, gets its name by linkat(2) from the fd (as editors
and `install` use it: write fully, then link into place), and leaves
nothing behind when closed unnamed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.overlay.syscalls import link_open_file
from tests.support.mounts import MountedSession, hash_tree

Mount = Callable[..., MountedSession]


def _lower(tmp_path: Path) -> Path:
    lower = tmp_path / "lower"
    (lower / "src").mkdir(parents=True)
    (lower / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    return lower


def test_tmpfile_written_then_linked_into_a_lower_directory(
        mount_session: Mount, tmp_path: Path) -> None:
    lower = _lower(tmp_path)
    before = hash_tree(lower)
    s = mount_session(lower)
    fd = os.open(s.mnt / "src", os.O_TMPFILE | os.O_RDWR, 0o640)
    try:
        os.write(fd, b"built output\n")
        st = os.fstat(fd)
        assert st.st_nlink == 0 and st.st_mode & 0o777 == 0o640
        assert sorted(os.listdir(s.mnt / "src")) == ["main.c"]  # no name yet
        link_open_file(fd, os.fsencode(s.mnt / "src" / "out.o"))
        assert os.fstat(fd).st_ino == os.stat(s.mnt / "src" / "out.o").st_ino
        os.write(fd, b"more\n")  # still the same file after it got its name
    finally:
        os.close(fd)
    assert (s.mnt / "src" / "out.o").read_bytes() == b"built output\nmore\n"
    assert (s.upper / "src" / "out.o").read_bytes() == b"built output\nmore\n"
    assert os.stat(s.mnt / "src" / "out.o").st_nlink == 1
    assert sorted(os.listdir(s.mnt / "src")) == ["main.c", "out.o"]
    s.umount()
    assert hash_tree(lower) == before  # the lower layer is never written
    s.mount()
    assert (s.mnt / "src" / "out.o").read_bytes() == b"built output\nmore\n"


def test_tmpfile_closed_unnamed_leaves_nothing_and_excl_cannot_be_linked(
        mount_session: Mount, tmp_path: Path) -> None:
    s = mount_session(_lower(tmp_path))
    fd = os.open(s.mnt, os.O_TMPFILE | os.O_WRONLY | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"scratch")
        with pytest.raises(OSError) as refused:
            link_open_file(fd, os.fsencode(s.mnt / "kept"))
        assert refused.value.errno == errno.ENOENT  # O_EXCL: never linkable
    finally:
        os.close(fd)
    assert sorted(os.listdir(s.mnt)) == ["src"]
    assert [p.name for p in s.upper.rglob("*")] == []
    # The mount still answers O_TMPFILE after that (no EOPNOTSUPP latch).
    fd = os.open(s.mnt / "src", os.O_TMPFILE | os.O_RDWR, 0o600)
    os.close(fd)
