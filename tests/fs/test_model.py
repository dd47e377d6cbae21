"""Model-based test: random file-system operation sequences on an overlay mount and
on a plain directory must give the same results and the same tree.

The system under test (SUT) is an overlay whose lower layer holds a template tree;
the model is a plain directory that starts as a copy of that template. Every rule
runs the same operation on both sides and compares the outcome (return value or
errno); after every step the two trees are compared (names, types, content, modes,
link targets, nlink of non-directories, xattrs). Kernel overlayfs runs as a SUT too:
it proves the model and the comparison are right.

One mount per SUT per module; each hypothesis example gets a fresh pair of
directories from `PairPool` (the lower layer holds many copies of the template).

Defaults keep CI fast: 40 examples of up to 30 steps. ASTRID_SLOW=1 runs 400 of 60.
"""

from __future__ import annotations

import ast
import ctypes
import errno
import mmap
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.fs.mount_fixture import AstridFsMount, OverlayMount, PairPool, make_mount

SLOW = os.environ.get("ASTRID_SLOW") == "1"
SETTINGS = settings(
    max_examples=400 if SLOW else 40,
    stateful_step_count=60 if SLOW else 30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)

# ---------------------------------------------------------------------------
# The template: what every example's lower directory (and model copy) starts as.


def build_template(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "f1").write_bytes(b"lower f1\n")
    (root / "f2").write_bytes(b"")
    (root / "x").write_bytes(b"x" * 5000)
    os.setxattr(root / "x", "user.tag", b"lower")
    os.chmod(root / "x", 0o640)
    (root / "d1").mkdir()
    (root / "d1" / "a").write_bytes(b"a in d1\n")
    (root / "d1" / "b").write_bytes(b"b in d1\n")
    (root / "d1" / "s").mkdir()
    (root / "d1" / "s" / "c").write_bytes(b"c in d1/s\n")
    os.setxattr(root / "d1", "user.dir", b"d1")
    (root / "d2").mkdir()
    (root / "d3" / "deep").mkdir(parents=True)
    (root / "d3" / "deep" / "f1").write_bytes(b"deep\n")
    os.chmod(root / "d3" / "deep", 0o750)
    os.symlink("f1", root / "sym")
    os.symlink("nowhere", root / "dangling")
    os.symlink("d1", root / "dsym")
    # A hard link in the lower: a write through one name shows through the
    # other (kernel overlayfs with index=on; astrid-fs's link index).
    os.link(root / "f1", root / "d2" / "f1")


DIRS = ["", "d1", "d2", "d1/s", "d3/deep", "n1", "n2/n3"]
NAMES = ["f1", "f2", "x", "a", "c", "d1", "d2", "d3", "s", "n1", "n2", "sym", "dsym", "new"]
PATHS = sorted({f"{d}/{n}" if d else n for d in DIRS for n in NAMES})
DIR_PATHS = sorted(
    set(DIRS[1:]) | {"d3", "n2", "d1/n1", "d2/n1", "d1/s/n1", "d3/deep/new", "new"}
)
LINK_TARGETS = ["f1", "../f1", "d1", "nowhere", "d1/a", "x", "../../f2", "."]
XATTR_NAMES = ["user.tag", "user.k1", "user.dir"]

data = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(0, 70000), st.integers(0, 255)),
)
modes = st.sampled_from(
    [0o644, 0o600, 0o755, 0o700, 0o444, 0o640, 0o4755, 0o1777, 0o777, 0o666, 0o2775]
)
NOBODY = 65534
offsets = st.integers(0, 9000)


# ---------------------------------------------------------------------------
# Observing a tree.


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        return (("<listxattr errno>", errno.errorcode.get(e.errno or 0, "?").encode()),)
    out = []
    for name in sorted(names):
        if name.startswith(("security.", "system.")):
            continue  # LSM labels / ACLs are the host's business, not the overlay's
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            value = f"<getxattr {errno.errorcode.get(e.errno or 0, '?')}>".encode()
        out.append((name, value))
    return tuple(out)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything we compare, keyed by path relative to `root`."""
    out: dict[str, tuple[Any, ...]] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else str(root)
        for name in sorted(os.listdir(full)):
            r = f"{rel}/{name}" if rel else name
            p = os.path.join(full, name)
            st_ = os.lstat(p)
            kind = stat.S_IFMT(st_.st_mode)
            perm = stat.S_IMODE(st_.st_mode)
            owner = (st_.st_uid, st_.st_gid)
            if stat.S_ISDIR(kind):
                out[r] = ("dir", oct(perm), owner, _xattrs(p))
                stack.append(r)
            elif stat.S_ISREG(kind):
                with open(p, "rb") as f:
                    content = f.read()
                out[r] = ("file", oct(perm), st_.st_size, content, st_.st_nlink, owner,
                          _xattrs(p))
            elif stat.S_ISLNK(kind):
                out[r] = ("symlink", os.readlink(p), owner, _xattrs(p))
            else:
                out[r] = ("other", kind, oct(perm), st_.st_nlink)
    return out


def diff_trees(sut: dict[str, tuple[Any, ...]], ref: dict[str, tuple[Any, ...]]) -> str:
    lines = []
    for k in sorted(set(sut) | set(ref)):
        a, b = sut.get(k), ref.get(k)
        if a != b:
            short_a = tuple(x[:40] if isinstance(x, bytes) else x for x in a) if a else a
            short_b = tuple(x[:40] if isinstance(x, bytes) else x for x in b) if b else b
            lines.append(f"  {k}: overlay={short_a} model={short_b}")
    return "\n".join(lines)


Outcome = tuple[str, Any]


def outcome(fn: Callable[[], Any]) -> Outcome:
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno or 0, str(e.errno)))


# ---------------------------------------------------------------------------
# Operations, each a function of (root, args) so both sides run identical code.


def _open_write(path: str, flags: int, payload: bytes, offset: int | None = None) -> int:
    fd = os.open(path, flags, 0o644)
    try:
        if offset is None:
            return os.write(fd, payload) if payload else 0
        return os.pwrite(fd, payload, offset)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


RENAME_FLAGS = {"RENAME_NOREPLACE": 1, "RENAME_EXCHANGE": 2}
_libc = ctypes.CDLL(None, use_errno=True)


def _renameat2(src: str, dst: str, flags: int) -> None:
    at_fdcwd = -100
    if _libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


# The modes the kernel's FUSE client forwards (it refuses COLLAPSE_RANGE and
# INSERT_RANGE itself; tests/fs/test_modern_io.py pins that).
FALLOCATE_MODES = {
    "0": 0,
    "KEEP_SIZE": 0x01,
    "PUNCH_HOLE|KEEP_SIZE": 0x03,
    "PUNCH_HOLE": 0x02,  # EOPNOTSUPP on every filesystem
    "ZERO_RANGE": 0x10,
    "ZERO_RANGE|KEEP_SIZE": 0x11,
}
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _fallocate_path(path: str, mode: int, offset: int, length: int) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        if _libc.fallocate(fd, mode, offset, length) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _lseek_path(path: str, offset: int, whence: int) -> int | str:
    fd = os.open(path, os.O_RDONLY)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            return "dir"  # SEEK_DATA on a directory: overlayfs EINVAL, ext4 0
        return os.lseek(fd, offset, whence)
    finally:
        os.close(fd)


def _stat_summary(path: str) -> tuple[int, int, int]:
    s = os.stat(path)
    return (stat.S_IFMT(s.st_mode), stat.S_IMODE(s.st_mode), s.st_size if not
            stat.S_ISDIR(s.st_mode) else 0)


def as_nobody(fn: Callable[[], Any]) -> Any:
    """Run fn in a child process with uid/gid 65534 (no groups); return its result
    or raise its OSError, so permission checks are exercised as a plain user."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(rfd)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            try:
                result: Any = ("ok", fn())
            except OSError as e:
                result = ("err", e.errno)
            os.write(wfd, repr(result).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        raw = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and raw, "as_nobody child failed"
    kind, value = ast.literal_eval(raw.decode())
    if kind == "err":
        raise OSError(value, os.strerror(value))
    return value


# ---------------------------------------------------------------------------
# The state machine. `POOL` is set per SUT by the test below.


class OverlayModel(RuleBasedStateMachine):
    POOL: PairPool

    def __init__(self) -> None:
        super().__init__()
        self.sut, self.ref = self.POOL.fresh_pair()
        self.log: list[str] = []
        self.state = snapshot(self.ref)
        self.unwritten = False  # an allocating fallocate ran (see seek_data_hole)

    def pick(self, draw: st.DataObject, kind: str) -> str:
        """A path: mostly one that exists now (of `kind`: file, dir, any, new), else any
        from the fixed universe (which also makes ENOENT/ENOTDIR/EEXIST cases)."""
        if kind == "new":
            dirs = ["", *(k for k, v in self.state.items() if v[0] == "dir")]
            choices = sorted({f"{d}/{n}" if d else n for d in dirs for n in NAMES}
                             - set(self.state))
        elif kind == "any":
            choices = sorted(self.state)
        else:
            choices = sorted(k for k, v in self.state.items() if v[0] == kind)
        universe = PATHS if kind != "dir" else DIR_PATHS
        if choices and draw.draw(st.integers(0, 3), label="known?") > 0:
            return draw.draw(st.sampled_from(choices), label=kind)
        return draw.draw(st.sampled_from(universe), label="universe")

    def both(self, what: str, fn: Callable[[str], Any]) -> None:
        """Run `fn(root)` on both sides and require the same outcome."""
        got = outcome(lambda: fn(str(self.sut)))
        want = outcome(lambda: fn(str(self.ref)))
        self.log.append(f"{what} -> {want[0]}:{want[1] if want[0] == 'err' else ''}")
        assert got == want, (
            f"{self.POOL.overlay.kind}: {what}: overlay gave {got!r}, plain dir gave {want!r}"
        )

    # -- writes -------------------------------------------------------------

    @rule(d=st.data(), kind=st.sampled_from(["file", "new", "dir"]), payload=data)
    def create(self, d: st.DataObject, kind: str, payload: bytes) -> None:
        p = self.pick(d, kind)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self.both(f"creat({p}, {len(payload)}B)",
                  lambda r: _open_write(os.path.join(r, p), flags, payload))

    @rule(d=st.data(), flags=st.sampled_from([
        ("O_RDONLY|O_TRUNC", os.O_RDONLY | os.O_TRUNC),
        ("O_RDWR|O_TRUNC", os.O_RDWR | os.O_TRUNC),
        ("O_WRONLY|O_APPEND|O_TRUNC", os.O_WRONLY | os.O_APPEND | os.O_TRUNC),
    ]), payload=st.binary(max_size=16))
    def open_trunc(self, d: st.DataObject, flags: tuple[str, int], payload: bytes) -> None:
        """O_TRUNC on an existing file (Linux truncates even with O_RDONLY)."""
        p = self.pick(d, "file")
        self.both(f"open({p}, {flags[0]}) + write {len(payload)}B",
                  lambda r: _open_write(os.path.join(r, p), flags[1], payload))

    @rule(d=st.data(), off=st.integers(0, 5000), payload=st.binary(min_size=1, max_size=64))
    def mmap_write(self, d: st.DataObject, off: int, payload: bytes) -> None:
        """Write through a shared mapping, msync, unmap (within the current size)."""
        p = self.pick(d, "file")

        def op(r: str) -> int:
            fd = os.open(os.path.join(r, p), os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                if size == 0:
                    return 0
                at = off % size
                n = min(len(payload), size - at)
                with mmap.mmap(fd, size) as m:
                    m[at : at + n] = payload[:n]
                    m.flush()
                return n
            finally:
                os.close(fd)

        self.both(f"mmap-write({p} @{off})", op)

    @rule(d=st.data(), kind=st.sampled_from(["new", "any"]))
    def create_excl(self, d: st.DataObject, kind: str) -> None:
        p = self.pick(d, kind)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        self.both(f"open({p}, O_CREAT|O_EXCL)",
                  lambda r: _open_write(os.path.join(r, p), flags, b"excl"))

    @rule(d=st.data(), payload=data, off=offsets)
    def pwrite(self, d: st.DataObject, payload: bytes, off: int) -> None:
        p = self.pick(d, "file")
        self.both(f"pwrite({p}, {len(payload)}B @{off})",
                  lambda r: _open_write(os.path.join(r, p), os.O_WRONLY, payload, off))

    @rule(d=st.data(), payload=data)
    def append(self, d: st.DataObject, payload: bytes) -> None:
        p = self.pick(d, "file")
        self.both(f"append({p}, {len(payload)}B)",
                  lambda r: _open_write(os.path.join(r, p), os.O_WRONLY | os.O_APPEND, payload))

    @rule(d=st.data(), size=st.sampled_from([0, 1, 3, 100, 4096, 70000]))
    def truncate(self, d: st.DataObject, size: int) -> None:
        p = self.pick(d, "file")
        self.both(f"truncate({p}, {size})", lambda r: os.truncate(os.path.join(r, p), size))

    # -- sparse files: fallocate modes and SEEK_DATA / SEEK_HOLE ---------------

    @rule(d=st.data(), mode=st.sampled_from(sorted(FALLOCATE_MODES)),
          off=st.integers(0, 80000), length=st.integers(0, 80000))
    def fallocate(self, d: st.DataObject, mode: str, off: int, length: int) -> None:
        """fallocate(2) with a mode the kernel's FUSE client forwards (and
        PUNCH_HOLE without KEEP_SIZE, which ext4 refuses)."""
        p = self.pick(d, "file")
        self.both(f"fallocate({p}, {mode}, @{off}, {length})",
                  lambda r: _fallocate_path(os.path.join(r, p), FALLOCATE_MODES[mode],
                                            off, length))
        if "PUNCH_HOLE" not in mode and self.log[-1].endswith("ok:"):
            self.unwritten = True

    # ext4 reports an unwritten extent (what an allocating fallocate leaves)
    # as data wherever its pages happen to be cached, and the two sides cache
    # different pages (reads through FUSE are served from the mount's own
    # cache): after one, SEEK_DATA / SEEK_HOLE answers are not comparable.
    # Punched holes and data written stay exact.
    @precondition(lambda self: not self.unwritten)
    @rule(d=st.data(), whence=st.sampled_from(["SEEK_DATA", "SEEK_HOLE"]),
          off=st.integers(0, 80000))
    def seek_data_hole(self, d: st.DataObject, whence: str, off: int) -> None:
        p = self.pick(d, "file")
        self.both(f"lseek({p}, {off}, {whence})",
                  lambda r: _lseek_path(os.path.join(r, p), off, getattr(os, whence)))

    @rule(d=st.data(), mode=st.sampled_from([0o755, 0o700, 0o750]))
    def mkdir(self, d: st.DataObject, mode: int) -> None:
        p = self.pick(d, "new")
        self.both(f"mkdir({p}, {mode:o})", lambda r: os.mkdir(os.path.join(r, p), mode))

    @rule(d=st.data())
    def rmdir(self, d: st.DataObject) -> None:
        p = self.pick(d, "dir")
        self.both(f"rmdir({p})", lambda r: os.rmdir(os.path.join(r, p)))

    @rule(d=st.data(), kind=st.sampled_from(["file", "symlink", "any"]))
    def unlink(self, d: st.DataObject, kind: str) -> None:
        p = self.pick(d, kind)
        self.both(f"unlink({p})", lambda r: os.unlink(os.path.join(r, p)))

    def _rename(self, src: str, dst: str) -> None:
        self.both(f"rename({src}, {dst})",
                  lambda r: os.rename(os.path.join(r, src), os.path.join(r, dst)))

    @rule(d=st.data(), skind=st.sampled_from(["file", "dir", "symlink", "any"]),
          dkind=st.sampled_from(["new", "new", "any", "file", "dir"]))
    def rename(self, d: st.DataObject, skind: str, dkind: str) -> None:
        self._rename(self.pick(d, skind), self.pick(d, dkind))

    @rule(d=st.data(), flag=st.sampled_from(["RENAME_NOREPLACE", "RENAME_EXCHANGE"]),
          skind=st.sampled_from(["file", "dir", "symlink", "any"]),
          dkind=st.sampled_from(["file", "dir", "any", "new"]))
    def renameat2(self, d: st.DataObject, flag: str, skind: str, dkind: str) -> None:
        src, dst = self.pick(d, skind), self.pick(d, dkind)
        flags = RENAME_FLAGS[flag]
        self.both(f"renameat2({src}, {dst}, {flag})",
                  lambda r: _renameat2(os.path.join(r, src), os.path.join(r, dst), flags))

    @rule(src=st.sampled_from(["d1", "d3", "d1/s", "d3/deep", "d2"]),
          dst=st.sampled_from(["n1", "n2", "d2/n1", "new", "d1/n1", "d3/n1"]))
    def rename_lower_dir(self, src: str, dst: str) -> None:
        """Directories that (may) exist only in the lower layer: must not be EXDEV."""
        self._rename(src, dst)

    @rule(d=st.data(), dest=st.sampled_from(LINK_TARGETS))
    def symlink(self, d: st.DataObject, dest: str) -> None:
        p = self.pick(d, "new")
        self.both(f"symlink({dest!r}, {p})", lambda r: os.symlink(dest, os.path.join(r, p)))

    @rule(d=st.data(), skind=st.sampled_from(["file", "symlink", "any"]))
    def link(self, d: st.DataObject, skind: str) -> None:
        src, dst = self.pick(d, skind), self.pick(d, "new")
        self.both(f"link({src}, {dst})",
                  lambda r: os.link(os.path.join(r, src), os.path.join(r, dst),
                                    follow_symlinks=False))

    @rule(d=st.data(), kind=st.sampled_from(["file", "dir"]), mode=modes)
    def chmod(self, d: st.DataObject, kind: str, mode: int) -> None:
        p = self.pick(d, kind)
        self.both(f"chmod({p}, {mode:o})", lambda r: os.chmod(os.path.join(r, p), mode))

    @rule(d=st.data(), kind=st.sampled_from(["file", "dir", "any"]),
          name=st.sampled_from(XATTR_NAMES), value=st.binary(max_size=32))
    def setxattr(self, d: st.DataObject, kind: str, name: str, value: bytes) -> None:
        p = self.pick(d, kind)
        self.both(f"lsetxattr({p}, {name}, {value!r})",
                  lambda r: os.setxattr(os.path.join(r, p), name, value, follow_symlinks=False))

    @rule(d=st.data(), kind=st.sampled_from(["file", "dir"]), name=st.sampled_from(XATTR_NAMES))
    def removexattr(self, d: st.DataObject, kind: str, name: str) -> None:
        p = self.pick(d, kind)
        self.both(f"lremovexattr({p}, {name})",
                  lambda r: os.removexattr(os.path.join(r, p), name, follow_symlinks=False))

    @rule(d=st.data(), payload=data)
    def write_unlinked(self, d: st.DataObject, payload: bytes) -> None:
        """Open, unlink, then write and read through the open descriptor."""
        p = self.pick(d, "file")

        def op(r: str) -> tuple[bytes, int]:
            fd = os.open(os.path.join(r, p), os.O_RDWR)
            try:
                os.unlink(os.path.join(r, p))
                os.pwrite(fd, payload, 0)
                return os.pread(fd, 80000, 0), os.fstat(fd).st_nlink
            finally:
                os.close(fd)

        self.both(f"open+unlink+write({p})", op)

    @rule(d=st.data(), payload=data)
    def write_renamed(self, d: st.DataObject, payload: bytes) -> None:
        """Open, rename the file away, write through the descriptor, read the new name."""
        p, q = self.pick(d, "file"), self.pick(d, "new")

        def op(r: str) -> bytes:
            fd = os.open(os.path.join(r, p), os.O_WRONLY)
            try:
                os.rename(os.path.join(r, p), os.path.join(r, q))
                os.write(fd, payload)
            finally:
                os.close(fd)
            return _read(os.path.join(r, q))

        self.both(f"open+rename+write({p}, {q})", op)

    @rule(d=st.data(), payload=data)
    def editor_save(self, d: st.DataObject, payload: bytes) -> None:
        """Write a temp file, fsync, rename it over the target."""
        p = self.pick(d, "file")

        def op(r: str) -> None:
            tmp = os.path.join(r, "new")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, os.path.join(r, p))

        self.both(f"editor-save({p})", op)

    # -- ownership, times, and a plain user's permission checks -----------------

    @rule(d=st.data(), kind=st.sampled_from(["file", "dir", "symlink"]),
          uid=st.sampled_from([0, NOBODY]), gid=st.sampled_from([0, NOBODY, -1]))
    def lchown(self, d: st.DataObject, kind: str, uid: int, gid: int) -> None:
        p = self.pick(d, kind)
        self.both(f"lchown({p}, {uid}, {gid})",
                  lambda r: os.chown(os.path.join(r, p), uid, gid, follow_symlinks=False))

    @rule(d=st.data(), kind=st.sampled_from(["file", "dir"]),
          atime=st.integers(0, 2**33), mtime=st.integers(0, 2**33))
    def utime(self, d: st.DataObject, kind: str, atime: int, mtime: int) -> None:
        """Set times, then read them back (other steps change mtime to "now")."""
        p = self.pick(d, kind)

        def op(r: str) -> tuple[int, int]:
            path = os.path.join(r, p)
            os.utime(path, ns=(atime * 1000, mtime * 1000))
            s_ = os.stat(path)
            return s_.st_atime_ns, s_.st_mtime_ns

        self.both(f"utime({p}, {atime}, {mtime})", op)

    @rule(d=st.data(), what=st.sampled_from(["create", "write", "mkdir", "unlink", "rename",
                                             "rmdir", "chmod", "setxattr", "read"]),
          payload=st.binary(max_size=16))
    def nobody(self, d: st.DataObject, what: str, payload: bytes) -> None:
        """The same operation as uid 65534: EACCES/EPERM must match too."""
        if what in ("create", "mkdir"):
            p = self.pick(d, "new")
        elif what in ("rmdir",):
            p = self.pick(d, "dir")
        elif what in ("unlink", "rename"):
            p = self.pick(d, "any")
        else:
            p = self.pick(d, "file")
        q = self.pick(d, "new")

        def op(r: str) -> Any:
            path = os.path.join(r, p)
            if what == "create":
                return _open_write(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, payload)
            if what == "write":
                return _open_write(path, os.O_WRONLY | os.O_APPEND, payload)
            if what == "mkdir":
                return os.mkdir(path, 0o777)
            if what == "unlink":
                return os.unlink(path)
            if what == "rename":
                return os.rename(path, os.path.join(r, q))
            if what == "rmdir":
                return os.rmdir(path)
            if what == "chmod":
                return os.chmod(path, 0o666)
            if what == "setxattr":
                return os.setxattr(path, "user.k1", payload)
            return _read(path)

        self.both(f"as-nobody {what}({p}{', ' + q if what == 'rename' else ''})",
                  lambda r: as_nobody(lambda: op(r)))

    # -- inode numbers: stable across copy-up and rename, shared by hard links --

    @rule(d=st.data(), kind=st.sampled_from(["file", "dir"]), how=st.sampled_from(
        ["append", "chmod", "setxattr", "truncate"]))
    def copyup_keeps_ino(self, d: st.DataObject, kind: str, how: str) -> None:
        p = self.pick(d, kind)

        def op(r: str) -> bool:
            path = os.path.join(r, p)
            before = os.lstat(path).st_ino
            if how == "append" and kind == "file":
                _open_write(path, os.O_WRONLY | os.O_APPEND, b"+")
            elif how == "truncate" and kind == "file":
                os.truncate(path, 1)
            elif how == "setxattr":
                os.setxattr(path, "user.k1", b"ino", follow_symlinks=False)
            else:
                os.chmod(path, 0o751)
            return os.lstat(path).st_ino == before

        self.both(f"ino-stable({how} {p})", op)

    @rule(d=st.data(), skind=st.sampled_from(["file", "dir", "symlink"]))
    def rename_keeps_ino(self, d: st.DataObject, skind: str) -> None:
        src, dst = self.pick(d, skind), self.pick(d, "new")

        def op(r: str) -> bool:
            before = os.lstat(os.path.join(r, src)).st_ino
            os.rename(os.path.join(r, src), os.path.join(r, dst))
            return os.lstat(os.path.join(r, dst)).st_ino == before

        self.both(f"ino-stable(rename {src} -> {dst})", op)

    @rule(d=st.data())
    def same_inode(self, d: st.DataObject) -> None:
        """Two names are the same inode on the overlay iff they are in the model."""
        p, q = self.pick(d, "any"), self.pick(d, "any")
        self.both(f"same-inode({p}, {q})",
                  lambda r: os.lstat(os.path.join(r, p)).st_ino
                  == os.lstat(os.path.join(r, q)).st_ino)

    # -- reads (also catch stale caches between steps) -----------------------

    @rule(d=st.data(), kind=st.sampled_from(["file", "symlink", "any"]))
    def read(self, d: st.DataObject, kind: str) -> None:
        p = self.pick(d, kind)
        self.both(f"read({p})", lambda r: _read(os.path.join(r, p)))

    @rule(d=st.data())
    def listdir(self, d: st.DataObject) -> None:
        p = self.pick(d, "dir")
        self.both(f"listdir({p})", lambda r: sorted(os.listdir(os.path.join(r, p))))

    @rule(d=st.data())
    def stat_(self, d: st.DataObject) -> None:
        p = self.pick(d, "any")
        self.both(f"stat({p})", lambda r: _stat_summary(os.path.join(r, p)))

    # -- the tree ------------------------------------------------------------

    @precondition(lambda self: isinstance(self.POOL.overlay, AstridFsMount))
    @rule()
    def kernel_reads_upper(self) -> None:
        """The session's upper layer is in overlayfs' on-disk format: kernel overlayfs
        mounting it (read-only, as a layer above the same lower) shows the same tree."""
        ov = self.POOL.overlay
        assert isinstance(ov, AstridFsMount)
        view = ov.base / "kernel-view"
        view.mkdir(exist_ok=True)
        opts = f"lowerdir={ov.upper}:{ov.lower},redirect_dir=follow"
        proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(view)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"kernel overlayfs refused the upper: {proc.stderr}"
        try:
            got = snapshot(view / self.sut.name)
        finally:
            subprocess.run(["umount", str(view)], check=True)
        want = snapshot(self.ref)
        # nlink of files whose hard-link partner lives in another layer may differ
        # on a read-only stack (no index there: the kernel cannot know that a
        # lower name was removed); everything else must match
        got, want = _without_file_nlink(got), _without_file_nlink(want)
        assert got == want, (
            f"kernel overlayfs over the astrid-fs upper differs after "
            f"{self.log[-1] if self.log else 'no step'}:\n{diff_trees(got, want)}"
        )

    @invariant()
    def trees_match(self) -> None:
        got, want = snapshot(self.sut), snapshot(self.ref)
        self.state = want
        if got != want:
            raise AssertionError(
                f"{self.POOL.overlay.kind}: trees differ after "
                f"{self.log[-1] if self.log else 'no step'}:\n{diff_trees(got, want)}"
            )


def _without_file_nlink(tree: dict[str, Any]) -> dict[str, Any]:
    return {path: (entry[:4] + entry[5:] if entry[0] == "file" else entry)
            for path, entry in tree.items()}


# ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["kernel-overlay", "astrid-fs"])
def pool(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[PairPool]:
    assert os.geteuid() == 0, "the model test mounts overlays and needs root (CI runs as root)"
    kind: str = request.param
    # not under pytest's 0700 basetemp: uid 65534 must be able to reach both trees
    base = Path(tempfile.mkdtemp(prefix=f"astrid-model-{kind}-", dir="/tmp"))
    base.chmod(0o755)
    overlay: OverlayMount = make_mount(kind, base)
    p = PairPool(overlay, base / "ref", build_template, batch=64)
    try:
        yield p
    finally:
        if isinstance(overlay, AstridFsMount):  # keep the daemon's log with pytest's temp
            for log in overlay.home.glob("sessions/*/run/daemon.log"):
                shutil.copy(log, tmp_path_factory.getbasetemp() / "model-astrid-fs-daemon.log")
        try:
            p.close()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def test_overlay_matches_plain_directory(pool: PairPool) -> None:
    class Machine(OverlayModel):
        POOL = pool

    run_state_machine_as_test(Machine, settings=SETTINGS)
