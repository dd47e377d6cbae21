"""The local driver over a scratch directory, and the read-only wrapper."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.drivers.base import LowerDriver, Reader, check_rel, synthetic_ino
from astrid_fs.drivers.errors import (
    InvalidPath,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
    ReadOnly,
)
from astrid_fs.drivers.local import LocalDriver, open_local
from astrid_fs.drivers.readonly import ReadOnlyDriver
from astrid_fs.drivers.registry import Registry


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "lower"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hi')\n")
    (root / "src" / "pkg" / "__init__.py").write_text("")
    (root / "README").write_text("readme")
    os.symlink("src/main.py", root / "link")
    os.mkfifo(root / "fifo")
    return root


def test_is_a_lower_driver_with_a_local_root(tree: Path) -> None:
    drv = LocalDriver(tree)
    assert isinstance(drv, LowerDriver)
    assert drv.local_root == tree and not drv.is_remote
    assert drv.capabilities.symlinks and drv.capabilities.atomic_rename
    drv.check()


def test_stat_and_list(tree: Path) -> None:
    drv = LocalDriver(tree)
    names = [n for n, _ in drv.list_dir("")]
    assert names == ["README", "link", "src"]  # the fifo is not part of a tree
    st = drv.stat("src/main.py")
    assert st is not None and st.kind == "file" and st.size == len("print('hi')\n")
    assert stat.S_ISREG(st.mode) and st.mtime_ns == os.lstat(tree / "src/main.py").st_mtime_ns
    assert st.ino == synthetic_ino(drv.source, "src/main.py") < 2**48
    assert drv.stat("link").kind == "symlink"  # type: ignore[union-attr]
    assert drv.readlink("link") == "src/main.py"
    assert drv.stat("src").kind == "dir"  # type: ignore[union-attr]
    assert drv.stat("nope") is None and drv.stat("README/x") is None
    with pytest.raises(NotADirectory):
        drv.list_dir("README")
    with pytest.raises(NotFound) as info:
        drv.list_dir("missing")
    assert info.value.errno == errno.ENOENT


def test_reader_preads_from_threads(tree: Path) -> None:
    body = os.urandom(1 << 20)
    (tree / "blob").write_bytes(body)
    reader: Reader = LocalDriver(tree).open_reader("blob")
    bad: list[int] = []

    def work(i: int) -> None:
        for off in range(i * 1000, len(body), 65536):
            if reader.pread(4096, off) != body[off:off + 4096]:
                bad.append(off)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == [] and reader.pread(10, len(body)) == b""
    reader.close()
    reader.close()


def test_write_back(tree: Path, tmp_path: Path) -> None:
    drv = LocalDriver(tree)
    src = tmp_path / "new"
    src.write_bytes(b"new content")
    before = drv.fingerprint("README")
    fp = drv.put_file("README", src, 0o600, 1_000_000_000)
    assert (tree / "README").read_bytes() == b"new content"
    assert stat.S_IMODE(os.lstat(tree / "README").st_mode) == 0o600
    assert os.lstat(tree / "README").st_mtime_ns == 1_000_000_000
    assert fp == drv.fingerprint("README") != before
    assert not [p for p in os.listdir(tree) if "astrid-put" in p]  # no temp left
    drv.make_dir("docs", 0o755)
    drv.make_dir("docs", 0o755)  # exists: fine
    drv.make_symlink("docs/l", "../README")
    drv.set_attrs("docs", 0o700, 2_000_000_000)
    assert os.lstat(tree / "docs").st_mtime_ns == 2_000_000_000
    drv.rename("docs/l", "docs/l2")
    assert os.readlink(tree / "docs/l2") == "../README"
    with pytest.raises(NotEmpty):
        drv.delete("src")
    drv.delete("docs/l2")
    drv.delete("docs")
    drv.delete("docs")  # absent: no error
    drv.delete_tree("src")
    assert not (tree / "src").exists()
    assert drv.fingerprint("src") is None
    with pytest.raises(InvalidPath):
        drv.delete_tree("")


def test_paths_are_checked(tree: Path) -> None:
    drv = LocalDriver(tree)
    for bad in ("/etc", "../x", "a/../b", "a//b", "a/", ".", "a/./b"):
        with pytest.raises(InvalidPath):
            drv.stat(bad)
        with pytest.raises(InvalidPath):
            check_rel(bad)


def test_check_fails_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        LocalDriver(tmp_path / "missing").check()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectory):
        LocalDriver(tmp_path / "file").check()


def test_permission_denied_maps_to_eacces(tree: Path) -> None:
    if os.geteuid() == 0:
        # root reads anything: a directory it cannot list needs another uid.
        os.chmod(tree / "src", 0o700)
        pid = os.fork()
        if pid == 0:
            os.setuid(65534)
            try:
                LocalDriver(tree / "src").list_dir("")
            except PermissionDenied as e:
                os._exit(0 if e.errno == errno.EACCES else 2)
            except BaseException:
                os._exit(3)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    else:
        os.chmod(tree / "src", 0)
        try:
            with pytest.raises(PermissionDenied):
                LocalDriver(tree).list_dir("src")
        finally:
            os.chmod(tree / "src", 0o755)


def test_read_only_wrapper_refuses_write_back(tree: Path, tmp_path: Path) -> None:
    drv = ReadOnlyDriver(LocalDriver(tree))
    assert drv.stat("README") is not None and drv.local_root == tree
    src = tmp_path / "x"
    src.write_text("x")
    calls: list[Callable[[], object]] = [
        lambda: drv.put_file("README", src, 0o644, 0), lambda: drv.delete("README"),
        lambda: drv.delete_tree("src"), lambda: drv.rename("README", "R"),
        lambda: drv.make_dir("d", 0o755), lambda: drv.make_symlink("s", "t"),
        lambda: drv.set_attrs("README", 0o600, None)]
    for call in calls:
        with pytest.raises(ReadOnly) as info:
            call()
        assert info.value.errno == errno.EROFS
    assert (tree / "README").read_text() == "readme"


def test_registry_finds_local_by_scheme(tree: Path) -> None:
    registry = Registry()
    assert {"local", "s3"} <= set(registry.drivers)
    for source in (str(tree), f"file://{tree}"):
        drv = registry.open(source, {})
        assert drv.local_root == tree
    with pytest.raises(Exception, match="no option 'x'"):
        open_local(str(tree), {"x": 1})
    with pytest.raises(Exception, match="no driver for gopher"):
        registry.open("gopher://host/x", {})
