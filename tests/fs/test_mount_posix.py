"""POSIX behaviour of a real astrid-fs mount: copy-up, whiteouts, opaque
dirs, renames, links, special files, xattrs, and that the lower layer is
never written."""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mounts import MountedSession, hash_tree

Mount = Callable[..., MountedSession]


def make_lower(root: Path) -> Path:
    lower = root / "lower"
    (lower / "src" / "pkg").mkdir(parents=True)
    (lower / "docs").mkdir()
    (lower / "README.md").write_text("hello\n")
    (lower / "src" / "main.py").write_text("print('hi')\n")
    (lower / "src" / "pkg" / "mod.py").write_text("X = 1\n")
    (lower / "docs" / "guide.md").write_text("guide\n")
    os.symlink("README.md", lower / "readme-link")
    os.chmod(lower / "src" / "main.py", 0o750)
    os.setxattr(lower / "README.md", "user.tag", b"lower-value")
    return lower


@pytest.fixture
def s(tmp_path: Path, mount_session: Mount) -> MountedSession:
    return mount_session(make_lower(tmp_path))


def test_reads_show_lower(s: MountedSession) -> None:
    assert (s.mnt / "README.md").read_text() == "hello\n"
    assert sorted(os.listdir(s.mnt)) == ["README.md", "docs", "readme-link", "src"]
    assert os.readlink(s.mnt / "readme-link") == "README.md"
    assert os.getxattr(s.mnt / "README.md", "user.tag") == b"lower-value"


def test_write_copies_up_and_keeps_lower(s: MountedSession) -> None:
    before = hash_tree(s.lower)
    with open(s.mnt / "src" / "main.py", "a") as f:
        f.write("print('more')\n")
    assert (s.mnt / "src" / "main.py").read_text() == "print('hi')\nprint('more')\n"
    assert (s.upper / "src" / "main.py").read_text() == "print('hi')\nprint('more')\n"
    assert stat.S_IMODE(os.stat(s.mnt / "src" / "main.py").st_mode) == 0o750
    assert hash_tree(s.lower) == before


def test_copy_up_keeps_inode_number_and_xattrs(s: MountedSession) -> None:
    ino = os.stat(s.mnt / "README.md").st_ino
    os.chmod(s.mnt / "README.md", 0o600)
    assert os.stat(s.mnt / "README.md").st_ino == ino
    assert os.getxattr(s.mnt / "README.md", "user.tag") == b"lower-value"
    s.umount()
    s.mount()
    assert os.stat(s.mnt / "README.md").st_ino == ino


def test_delete_lower_file_makes_whiteout(s: MountedSession) -> None:
    os.unlink(s.mnt / "docs" / "guide.md")
    assert os.listdir(s.mnt / "docs") == []
    st = os.lstat(s.upper / "docs" / "guide.md")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (s.lower / "docs" / "guide.md").exists()
    with pytest.raises(FileNotFoundError):
        os.stat(s.mnt / "docs" / "guide.md")


def test_recreate_dir_over_whiteout_is_opaque(s: MountedSession) -> None:
    os.unlink(s.mnt / "docs" / "guide.md")
    os.rmdir(s.mnt / "docs")
    os.mkdir(s.mnt / "docs")
    assert os.listdir(s.mnt / "docs") == []
    assert os.getxattr(s.upper / "docs", "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" not in os.listxattr(s.mnt / "docs")


def test_rmdir_nonempty_merged_dir_fails(s: MountedSession) -> None:
    with pytest.raises(OSError) as e:
        os.rmdir(s.mnt / "src")
    assert e.value.errno == errno.ENOTEMPTY


def test_rm_rf_lower_tree(s: MountedSession) -> None:
    before = hash_tree(s.lower)
    for dirpath, dirnames, filenames in os.walk(s.mnt / "src", topdown=False):
        for f in filenames:
            os.unlink(os.path.join(dirpath, f))
        for d in dirnames:
            os.rmdir(os.path.join(dirpath, d))
    os.rmdir(s.mnt / "src")
    assert not (s.mnt / "src").exists()
    assert hash_tree(s.lower) == before


def test_rename_lower_directory(s: MountedSession) -> None:
    ino = os.stat(s.mnt / "src").st_ino
    os.rename(s.mnt / "src", s.mnt / "source")
    assert sorted(os.listdir(s.mnt / "source")) == ["main.py", "pkg"]
    assert (s.mnt / "source" / "pkg" / "mod.py").read_text() == "X = 1\n"
    assert not (s.mnt / "src").exists()
    assert os.stat(s.mnt / "source").st_ino == ino
    # and again, into another lower directory
    os.rename(s.mnt / "source" / "pkg", s.mnt / "docs" / "pkg2")
    assert (s.mnt / "docs" / "pkg2" / "mod.py").read_text() == "X = 1\n"
    assert sorted(os.listdir(s.mnt / "source")) == ["main.py"]
    assert (s.lower / "src" / "pkg" / "mod.py").exists()


def test_rename_file_over_file_and_noreplace(s: MountedSession) -> None:
    os.rename(s.mnt / "src" / "main.py", s.mnt / "README.md")
    assert (s.mnt / "README.md").read_text() == "print('hi')\n"
    assert not (s.mnt / "src" / "main.py").exists()
    assert (s.lower / "README.md").read_text() == "hello\n"


def test_rename_dir_over_empty_lower_dir(s: MountedSession) -> None:
    os.unlink(s.mnt / "docs" / "guide.md")
    os.mkdir(s.mnt / "fresh")
    (s.mnt / "fresh" / "f").write_text("f")
    os.rename(s.mnt / "fresh", s.mnt / "docs")
    assert os.listdir(s.mnt / "docs") == ["f"]


def test_hard_links_share_inode(s: MountedSession) -> None:
    os.link(s.mnt / "README.md", s.mnt / "hard")
    a, b = os.stat(s.mnt / "README.md"), os.stat(s.mnt / "hard")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    with open(s.mnt / "hard", "a") as f:
        f.write("x")
    assert (s.mnt / "README.md").read_text() == "hello\nx"


def test_special_files(s: MountedSession) -> None:
    os.mkfifo(s.mnt / "fifo")
    assert stat.S_ISFIFO(os.stat(s.mnt / "fifo").st_mode)
    os.symlink("nowhere", s.mnt / "dangling")
    assert os.readlink(s.mnt / "dangling") == "nowhere"


def test_sparse_and_large_files(s: MountedSession) -> None:
    path = s.mnt / "sparse"
    with open(path, "wb") as f:
        f.seek(3 << 30)
        f.write(b"end")
    st = os.stat(path)
    assert st.st_size == (3 << 30) + 3
    assert st.st_blocks * 512 < 1 << 20
    with open(path, "rb") as f:
        f.seek(3 << 30)
        assert f.read() == b"end"
        f.seek(12345)
        assert f.read(4) == b"\0\0\0\0"


def test_sparse_lower_file_stays_sparse_on_copy_up(tmp_path: Path, mount_session: Mount) -> None:
    lower = make_lower(tmp_path)
    with open(lower / "holey", "wb") as f:
        f.seek(1 << 30)
        f.write(b"x")
    s = mount_session(lower)
    with open(s.mnt / "holey", "ab") as f:
        f.write(b"y")
    st = os.stat(s.upper / "holey")
    assert st.st_size == (1 << 30) + 2 and st.st_blocks * 512 < 1 << 20


def test_append_truncate_and_mmap(s: MountedSession) -> None:
    path = s.mnt / "README.md"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"a1")
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"a2")
    os.close(fd)
    assert path.read_bytes() == b"hello\na1a2"
    os.truncate(path, 3)
    assert path.read_bytes() == b"hel"
    with open(path, "r+b") as f:
        f.truncate(4096)
        with mmap.mmap(f.fileno(), 4096) as m:
            m[0:3] = b"HEL"
            m.flush()
    assert path.read_bytes()[:4] == b"HEL\0"
    assert (s.lower / "README.md").read_text() == "hello\n"


def test_chmod_chown_utimens(s: MountedSession) -> None:
    path = s.mnt / "docs" / "guide.md"
    os.chmod(path, 0o640)
    os.chown(path, 1234, 5678)
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert st.st_mtime_ns == 2_000_000_000
    lst = os.stat(s.lower / "docs" / "guide.md")
    assert (lst.st_uid, stat.S_IMODE(lst.st_mode)) == (0, 0o644)


def test_fsync_and_statfs(s: MountedSession) -> None:
    fd = os.open(s.mnt / "new", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"data")
    os.fsync(fd)
    os.close(fd)
    dfd = os.open(s.mnt, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    assert os.statvfs(s.mnt).f_namemax == 255


def test_xattrs_pass_through_but_overlay_ones_hidden(s: MountedSession) -> None:
    os.rename(s.mnt / "src", s.mnt / "moved")  # gets redirect + origin xattrs
    names = os.listxattr(s.mnt / "moved")
    assert not [n for n in names if "overlay" in n or "astrid" in n]
    with pytest.raises(OSError) as e:
        os.getxattr(s.mnt / "moved", "trusted.overlay.redirect")
    assert e.value.errno == errno.ENODATA
    with pytest.raises(OSError) as e:
        os.setxattr(s.mnt / "moved", "trusted.overlay.opaque", b"y")
    assert e.value.errno == errno.EPERM
    os.setxattr(s.mnt / "moved", "user.note", b"v")
    assert os.getxattr(s.mnt / "moved", "user.note") == b"v"
    os.removexattr(s.mnt / "moved", "user.note")
    assert "user.note" not in os.listxattr(s.mnt / "moved")


def test_unlinked_open_file(s: MountedSession) -> None:
    fd = os.open(s.mnt / "tmpfile", os.O_CREAT | os.O_RDWR, 0o600)
    os.write(fd, b"abc")
    os.unlink(s.mnt / "tmpfile")
    assert os.fstat(fd).st_nlink == 0
    assert os.pread(fd, 3, 0) == b"abc"
    os.close(fd)


def test_two_sessions_over_one_lower_are_isolated(tmp_path: Path, mount_session: Mount) -> None:
    lower = make_lower(tmp_path)
    a = mount_session(lower)
    b = mount_session(lower)
    (a.mnt / "README.md").write_text("from a\n")
    (b.mnt / "only-b").write_text("b\n")
    assert (b.mnt / "README.md").read_text() == "hello\n"
    assert not (a.mnt / "only-b").exists()
    assert (lower / "README.md").read_text() == "hello\n"


def test_lower_never_written_by_torture(tmp_path: Path, mount_session: Mount) -> None:
    lower = make_lower(tmp_path)
    for i in range(30):
        (lower / "src" / f"f{i}.txt").write_text(str(i) * i)
    before = hash_tree(lower)
    s = mount_session(lower)
    m = s.mnt
    for i in range(30):
        p = m / "src" / f"f{i}.txt"
        if i % 5 == 0:
            os.unlink(p)
        elif i % 5 == 1:
            os.chmod(p, 0o600)
        elif i % 5 == 2:
            os.rename(p, m / "docs" / f"moved{i}")
        elif i % 5 == 3:
            with open(p, "r+") as f:
                f.truncate(1)
        else:
            os.setxattr(p, "user.x", b"1")
    os.rename(m / "src" / "pkg", m / "pkg")
    os.rename(m / "docs", m / "src" / "docs")
    os.symlink("x", m / "src" / "ln")
    os.link(m / "README.md", m / "pkg" / "hl")
    for dirpath, _, files in os.walk(m / "pkg"):
        for f in files:
            os.utime(os.path.join(dirpath, f), ns=(1, 1))
    s.umount()
    assert hash_tree(lower) == before


def test_paths_up_to_path_max(s: MountedSession) -> None:
    # A 4040-byte session path no longer fits once the upper root is put in
    # front of it; the overlay must still create, rename and remove there.
    # (The test itself walks down with directory fds: its own absolute path
    # would be too long too.)
    components = [f"d{i:02d}" + "x" * 97 for i in range(40)]
    assert 4030 < len("/".join(components)) < 4080
    fds = [os.open(s.mnt, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for name in components:
            os.mkdir(name, dir_fd=fds[-1])
            fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        deep = fds[-1]
        fd = os.open("file", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=deep)
        os.write(fd, b"deep")
        os.close(fd)
        os.chmod("file", 0o600, dir_fd=deep)
        os.rename("file", "renamed", src_dir_fd=deep, dst_dir_fd=deep)
        os.link("renamed", "linked", src_dir_fd=deep, dst_dir_fd=deep)
        st = os.stat("linked", dir_fd=deep)
        assert st.st_nlink == 2 and stat.S_IMODE(st.st_mode) == 0o600
        fd = os.open("linked", os.O_RDONLY, dir_fd=deep)
        assert os.read(fd, 10) == b"deep"
        os.close(fd)
        os.unlink("renamed", dir_fd=deep)
        os.unlink("linked", dir_fd=deep)
        for name in reversed(components):
            os.close(fds.pop())
            os.rmdir(name, dir_fd=fds[-1])
    finally:
        for fd in fds:
            os.close(fd)
    assert os.listdir(s.mnt) == sorted(os.listdir(s.lower))


def test_open_files_survive_unlink_and_rename_over(s: MountedSession) -> None:
    # Files opened (not created) through the mount, then unlinked or
    # replaced: their data stays readable and writable through the fd.
    (s.mnt / "upper-file").write_text("upper")
    fd_upper = os.open(s.mnt / "upper-file", os.O_RDWR)
    fd_lower = os.open(s.mnt / "README.md", os.O_RDONLY)
    (s.mnt / "new").write_text("replacement")
    os.rename(s.mnt / "new", s.mnt / "upper-file")
    os.unlink(s.mnt / "README.md")
    try:
        assert os.pread(fd_upper, 5, 0) == b"upper"
        os.pwrite(fd_upper, b"UP", 0)
        assert os.pread(fd_upper, 5, 0) == b"UPper"
        assert os.fstat(fd_upper).st_nlink == 0
        assert os.pread(fd_lower, 6, 0) == b"hello\n"
        assert os.fstat(fd_lower).st_nlink == 0
    finally:
        os.close(fd_upper)
        os.close(fd_lower)
    assert (s.mnt / "upper-file").read_text() == "replacement"
    assert not (s.mnt / "README.md").exists()


def test_write_through_read_only_opened_file_after_copy_up(s: MountedSession) -> None:
    # A reader opened before another writer copies the file up must see the
    # new content, not the lower file's.
    reader = os.open(s.mnt / "docs" / "guide.md", os.O_RDONLY)
    try:
        assert os.pread(reader, 100, 0) == b"guide\n"
        with open(s.mnt / "docs" / "guide.md", "w") as f:
            f.write("rewritten\n")
        assert os.pread(reader, 100, 0) == b"rewritten\n"
    finally:
        os.close(reader)


def test_writes_through_stale_handles_never_reach_the_lower(tmp_path: Path,
                                                           mount_session: Mount) -> None:
    # A lower file read (kernel keeps an fd on the lower), then truncated
    # through a symlink (copy-up), then opened, unlinked and written: the
    # write lands in the session, never in the lower file.
    lower = make_lower(tmp_path)
    before = hash_tree(lower)
    s = mount_session(lower)
    assert (s.mnt / "readme-link").read_text() == "hello\n"
    os.close(os.open(s.mnt / "readme-link", os.O_RDONLY | os.O_TRUNC))
    fd = os.open(s.mnt / "README.md", os.O_RDWR)
    try:
        os.unlink(s.mnt / "README.md")
        os.pwrite(fd, b"X", 0)
        assert os.pread(fd, 100, 0) == b"X"
    finally:
        os.close(fd)
    s.umount()
    assert hash_tree(lower) == before


def test_commit_staging_dirs_in_the_lower_never_show(tmp_path: Path, mount_session: Mount) -> None:
    lower = make_lower(tmp_path)
    (lower / ".astrid-commit-0123").mkdir()
    s = mount_session(lower)
    assert ".astrid-commit-0123" not in os.listdir(s.mnt)
    assert not (s.mnt / ".astrid-commit-0123").exists()


def test_rename_exchange(s: MountedSession) -> None:
    from astrid_fs.overlay.syscalls import RENAME_EXCHANGE, renameat2

    before = hash_tree(s.lower)
    (s.mnt / "fresh").mkdir()
    (s.mnt / "fresh" / "n").write_text("n")
    renameat2(os.fsencode(s.mnt / "src"), os.fsencode(s.mnt / "fresh"), RENAME_EXCHANGE)
    assert sorted(os.listdir(s.mnt / "fresh")) == ["main.py", "pkg"]
    assert os.listdir(s.mnt / "src") == ["n"]
    renameat2(os.fsencode(s.mnt / "README.md"), os.fsencode(s.mnt / "docs" / "guide.md"),
              RENAME_EXCHANGE)
    assert (s.mnt / "README.md").read_text() == "guide\n"
    assert (s.mnt / "docs" / "guide.md").read_text() == "hello\n"
    s.umount()
    assert hash_tree(s.lower) == before
    s.mount()
    assert os.listdir(s.mnt / "src") == ["n"]
    assert (s.mnt / "fresh" / "pkg" / "mod.py").read_text() == "X = 1\n"


def test_copy_up_keeps_the_parent_directory_times(s: MountedSession) -> None:
    os.utime(s.mnt / "src", ns=(1_000_000_000, 2_000_000_000))
    os.chmod(s.mnt / "src" / "main.py", 0o700)           # copies main.py up
    with open(s.mnt / "src" / "pkg" / "mod.py", "a") as f:  # copies pkg and mod.py up
        f.write("Y = 2\n")
    s.umount()  # the kernel caches the attributes; read them from the layers again
    s.mount()
    assert os.stat(s.mnt / "src").st_mtime_ns == 2_000_000_000
    os.unlink(s.mnt / "src" / "main.py")                   # a real change does move it
    assert os.stat(s.mnt / "src").st_mtime_ns != 2_000_000_000
