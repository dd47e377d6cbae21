"""The VFS core (astrid_runtime/vfs.py, openat2.py) on real directory trees.

No wasm here: `PluginVfs` is driven directly. The property test plants
symlinks pointing out of the root (absolute, climbing, into /proc, magic
fd links) and throws generated hostile paths at every operation; nothing
it opens lies outside the root and nothing outside changes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astrid_runtime.errors import Refusal
from astrid_runtime.openat2 import RESOLVE_STRICT, openat2
from astrid_runtime.vfs import (
    HandleTable,
    PluginVfs,
    RootGrant,
    VfsLimits,
    check_path,
    root_grants,
)


def _plant(base: Path) -> tuple[Path, Path]:
    """root/ (the grant) and outside/ (must never change), with escape links in root."""
    root = base / "root"
    outside = base / "outside"
    (root / "src" / "deep").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    (root / "README").write_text("readme\n")
    (root / "src" / "main.py").write_text("print('hi')\n")
    links = {
        "abs_out": str(outside),
        "abs_secret": str(outside / "secret.txt"),
        "etc": "/etc",
        "up": "..",
        "up_out": "../outside",
        "src/deep/climb": "../../../outside/secret.txt",
        "src/deep/climb_dir": "../../..",
        "proc_root": "/proc/self/root",
        "proc_fd": "/proc/self/fd/0",
        "proc_cwd": "/proc/self/cwd",
        "in_ok": "src/main.py",
        "in_dir": "src",
        "loop": "loop",
        "dangling_out": str(outside / "new-file"),
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    return root, outside


def _snapshot(tree: Path) -> dict[str, tuple[int, bytes | str]]:
    out: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            body: bytes | str = (os.readlink(p) if p.is_symlink()
                                 else p.read_bytes() if p.is_file() else b"")
            out[str(p.relative_to(tree))] = (st_.st_mode, body)
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[PluginVfs, Path, Path]]:
    root, outside = _plant(tmp_path)
    vfs = PluginVfs("t", ["workspace"], {"workspace": root}, VfsLimits(max_handles=8,
                                                                          max_io_bytes=64))
    yield vfs, root, outside
    vfs.close_all()


def _refused(kind: str, fn: object, *args: object) -> Refusal:
    with pytest.raises(Refusal) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.kind == kind, info.value.message
    return info.value


# -- openat2 itself ----------------------------------------------------------------

def test_openat2_refuses_escapes(tmp_path: Path) -> None:
    root, _ = _plant(tmp_path)
    dfd = os.open(root, os.O_PATH)
    try:
        for path in ("abs_out", "up", "up_out", "src/deep/climb", "/etc", "../outside", "etc"):
            with pytest.raises(OSError) as info:
                openat2(dfd, path, os.O_PATH, 0, RESOLVE_STRICT)
            assert info.value.errno == errno.EXDEV, path
        fd = openat2(dfd, "in_ok", os.O_RDONLY)
        assert os.read(fd, 5) == b"print"
        os.close(fd)
    finally:
        os.close(dfd)


def test_check_path_rules() -> None:
    assert check_path("a/./b//c") == ["a", "b", "c"]
    assert check_path("") == []
    for bad in ("/etc", "a/../b", "..", "a\0b", "x" * 300):
        with pytest.raises(Refusal) as info:
            check_path(bad)
        assert info.value.kind == "invalid"
    with pytest.raises(Refusal):
        check_path(".", allow_empty=False)


def test_root_grants_parse() -> None:
    assert root_grants(["workspace:ro"]) == {"workspace": RootGrant("workspace", False)}
    assert root_grants(["workspace:ro", "workspace"])["workspace"].writable


# -- operations ---------------------------------------------------------------------

def test_read_write_list_stat_rename_remove(tree: tuple[PluginVfs, Path, Path]) -> None:
    vfs, root, _ = tree
    ws = vfs.root("workspace")
    f = vfs.open_file(ws, "todo.txt", {"write", "create"})
    assert vfs.write(f, b"one\n") == 4
    vfs.drop(f)
    f = vfs.open_file(ws, "todo.txt", {"append"})
    vfs.write(f, b"two\n")
    vfs.drop(f)
    assert (root / "todo.txt").read_text() == "one\ntwo\n"
    vfs.mkdir(ws, "notes")
    vfs.rename(ws, "todo.txt", "notes/todo.txt")
    sub = vfs.open_dir(ws, "notes")
    assert vfs.list(sub, "") == [("todo.txt", "file")]
    assert vfs.stat(sub, "todo.txt").size == 8
    f = vfs.open_file(sub, "todo.txt", {"read"})
    assert vfs.read(f, 3) == b"one"
    assert vfs.seek(f, 0, "end") == 8
    assert vfs.read(f, 10) == b""
    assert vfs.fstat(f).kind == "file"
    vfs.drop(f)
    assert ("in_ok", "symlink") in vfs.list(ws, ".")
    f = vfs.open_file(ws, "in_ok", {"read"})  # a symlink that stays inside is followed
    assert vfs.read(f, 5) == b"print"
    vfs.remove(ws, "notes/todo.txt")
    vfs.remove(ws, "notes")
    assert not (root / "notes").exists()


def test_bad_input_is_refused(tree: tuple[PluginVfs, Path, Path]) -> None:
    vfs, root, outside = tree
    before = _snapshot(outside)
    _refused("denied", vfs.root, "home")
    ws = vfs.root("workspace")
    _refused("denied", vfs.open_file, ws, "abs_secret", {"read"})
    _refused("denied", vfs.open_file, ws, "dangling_out", {"write", "create"})
    _refused("denied", vfs.open_dir, ws, "up")
    _refused("denied", vfs.open_dir, ws, "proc_root")
    _refused("denied", vfs.open_file, ws, "proc_fd", {"read"})
    _refused("denied", vfs.open_file, ws, "loop", {"read"})
    _refused("invalid", vfs.open_file, ws, "../outside/secret.txt", {"read"})
    _refused("invalid", vfs.open_file, ws, "/etc/passwd", {"read"})
    _refused("invalid", vfs.open_file, ws, "src", {"read"})
    _refused("not-found", vfs.open_file, ws, "nope", {"read"})
    _refused("conflict", vfs.mkdir, ws, "src")
    _refused("too-large", vfs.read, vfs.open_file(ws, "README", {"read"}), 65)
    f = vfs.open_file(ws, "README", {"read"})
    _refused("denied", vfs.write, f, b"x")
    vfs.drop(f)
    _refused("closed", vfs.read, f, 1)
    _refused("not-found", vfs.read, 10_000, 1)
    _refused("invalid", vfs.read, ws, 1)
    os.mkfifo(root / "fifo")
    _refused("invalid", vfs.open_file, ws, "fifo", {"read"})  # and it did not block
    _refused("invalid", vfs.open_file, ws, "fifo", {"write", "create"})
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # tests run as root
    _refused("invalid", vfs.open_file, ws, "null", {"write"})
    _refused("conflict", vfs.open_file, ws, "README", {"write", "create", "exclusive"})
    assert _snapshot(outside) == before


def test_read_only_grant(tmp_path: Path) -> None:
    root, _ = _plant(tmp_path)
    before = _snapshot(root)
    vfs = PluginVfs("t", ["workspace:ro"], {"workspace": root})
    ws = vfs.root("workspace")
    for flags in ({"write"}, {"create"}, {"append"}, {"write", "truncate"}):
        _refused("denied", vfs.open_file, ws, "README", flags)
    _refused("denied", vfs.mkdir, ws, "x")
    _refused("denied", vfs.remove, ws, "README")
    _refused("denied", vfs.rename, ws, "README", "R2")
    f = vfs.open_file(ws, "README", {"read"})
    assert vfs.read(f, 64) == b"readme\n"
    vfs.close_all()
    assert _snapshot(root) == before


def test_handle_limit_and_close_all(tree: tuple[PluginVfs, Path, Path]) -> None:
    vfs, _, _ = tree
    reps = [vfs.root("workspace") for _ in range(8)]
    _refused("too-large", vfs.root, "workspace")
    vfs.drop(reps[0])
    reps[0] = vfs.root("workspace")
    assert vfs.close_all() == 8
    _refused("closed", vfs.list, reps[3], "")


def test_unprovided_root(tmp_path: Path) -> None:
    vfs = PluginVfs("t", ["workspace"], {})
    _refused("unavailable", vfs.root, "workspace")


def test_table_reps_are_not_reused(tmp_path: Path) -> None:
    table = HandleTable(limit=2)
    vfs = PluginVfs("t", ["w"], {"w": tmp_path})
    vfs.table = table
    a = vfs.root("w")
    vfs.drop(a)
    b = vfs.root("w")
    assert b != a
    _refused("closed", table.get, a)


# -- the property: no hostile path escapes ----------------------------------------

_COMPONENTS = st.sampled_from([
    "..", ".", "", "src", "deep", "README", "main.py", "abs_out", "abs_secret", "etc", "up",
    "up_out", "climb", "climb_dir", "proc_root", "proc_fd", "proc_cwd", "in_ok", "in_dir",
    "loop", "dangling_out", "outside", "secret.txt", "passwd", "new", "..."])
_PATHS = st.builds(lambda lead, parts: lead + "/".join(parts),
                   st.sampled_from(["", "", "", "/", "//", "./"]),
                   st.lists(_COMPONENTS, min_size=0, max_size=6))
_OPS = st.sampled_from(["open_dir", "open_file_r", "open_file_w", "open_file_c", "list",
                        "stat", "mkdir", "remove", "rename_from", "rename_to"])


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(_OPS, _PATHS, st.booleans()), min_size=1, max_size=6))
def test_no_hostile_path_escapes(tmp_path_factory: pytest.TempPathFactory,
                                 ops: list[tuple[str, str, bool]]) -> None:
    base = tmp_path_factory.mktemp("hostile")
    root, outside = _plant(base)
    outside_before = _snapshot(outside)
    real_root = os.path.realpath(root)
    vfs = PluginVfs("t", ["workspace"], {"workspace": root}, VfsLimits(max_handles=32))
    dirs = [vfs.root("workspace")]
    try:
        for op, path, from_sub in ops:
            d = dirs[-1] if from_sub else dirs[0]
            try:
                if op == "open_dir":
                    dirs.append(vfs.open_dir(d, path))
                elif op.startswith("open_file"):
                    flags = {"open_file_r": {"read"}, "open_file_w": {"write", "read"},
                             "open_file_c": {"write", "create"}}[op]
                    rep = vfs.open_file(d, path, flags)
                    handle = vfs.table.get(rep)
                    assert _fd_path(handle.fd).startswith(real_root + "/"), path
                    if "write" in flags:
                        vfs.write(rep, b"x")
                elif op == "list":
                    vfs.list(d, path)
                elif op == "stat":
                    vfs.stat(d, path)
                elif op == "mkdir":
                    vfs.mkdir(d, path)
                elif op == "remove":
                    vfs.remove(d, path)
                elif op == "rename_from":
                    vfs.rename(d, path, "renamed")
                else:
                    vfs.rename(d, "README", path)
            except Refusal:
                pass
        for rep, handle in list(vfs.table.handles.items()):
            where = _fd_path(handle.fd)
            assert where == real_root or where.startswith(real_root + "/"), (rep, where)
    finally:
        vfs.close_all()
    assert _snapshot(outside) == outside_before
    assert sorted(os.listdir(base)) == ["outside", "root"]
