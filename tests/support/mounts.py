"""Test support: mount and unmount astrid-fs sessions for real, snapshot trees.

Tests that need FUSE call `require_fuse()`: it fails loudly (never skips)
when not root or /dev/fuse is missing, because CI has both.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
ASTRID_FS = [sys.executable, "-m", "astrid_fs.cli"]


def require_fuse() -> None:
    assert os.geteuid() == 0, "these tests mount FUSE file systems and need root (CI runs as root)"
    assert os.path.exists("/dev/fuse"), "/dev/fuse is missing: FUSE tests cannot run"


def missing_part(why: str) -> NoReturn:
    """A part this test needs is absent: skip under a bare `pytest` on a
    developer's machine; fail under scripts/test.sh (the README's test
    command, which CI runs: it sets ASTRID_REQUIRE_PARTS) or wherever `CI` is
    set, since there set-up installs every part and the machine provides the
    rest (root, /dev/fuse, the kernel's features)."""
    if os.environ.get("CI") or os.environ.get("ASTRID_REQUIRE_PARTS"):
        pytest.fail(f"missing where every part must be present: {why}")
    pytest.skip(why)


def run_cli(*args: str, home: Path, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `astrid-fs ARGS` as a user would, with ASTRID_HOME=home."""
    full_env = {**os.environ, "ASTRID_HOME": str(home), **(env or {})}
    result = subprocess.run([*ASTRID_FS, *args], capture_output=True, text=True,
                            env=full_env, cwd="/", check=False, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"astrid-fs {' '.join(args)} failed ({result.returncode}): "
                             f"{result.stderr.strip()}")
    return result


def named_threads(pid: int, prefix: str) -> dict[int, int]:
    """Process `pid`'s threads whose name starts with `prefix`: thread id ->
    scheduling policy."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        if name.startswith(prefix):
            out[int(tid)] = os.sched_getscheduler(int(tid))
    return out


def ring_threads(pid: int) -> dict[int, int]:
    """The io_uring queue threads (`astrid-ring<CPU>`, several per CPU) of
    daemon `pid`: thread id -> scheduling policy."""
    return named_threads(pid, "astrid-ring")


@contextmanager
def loop_ext4(image: Path, where: Path, mib: int = 64) -> Iterator[str]:
    """A fresh ext4 without a journal in file `image`, loop-mounted at `where`
    (a file system of the test's own, to freeze or to watch the writes of);
    yields its block device. Unmounted at the end."""
    where.mkdir(exist_ok=True)
    with image.open("wb") as f:
        f.truncate(mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image)], check=True,
                   capture_output=True)
    done = subprocess.run(["mount", "-o", "loop", str(image), str(where)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        missing_part(f"loop devices: {done.stderr.strip()}")
    try:
        yield subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(where)], check=True,
                             capture_output=True, text=True).stdout.strip()
    finally:
        _umount_loop(where)


LOOP_UMOUNT_WAIT_S = 30


def _umount_loop(where: Path) -> None:
    """Unmount a test's own file system. A busy unmount is tried again,
    bounded (a process that used it may be finishing); one that never
    succeeds is detached (so no mount is left behind) and fails the test.
    Before, a failed unmount was ignored and left the loop mount in place
    (once, in CI on 2026-12-05; the cause was not seen)."""
    deadline = time.monotonic() + LOOP_UMOUNT_WAIT_S
    while True:
        done = subprocess.run(["umount", str(where)], capture_output=True, text=True, check=False)
        if done.returncode == 0 or not os.path.ismount(where):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)  # (a poll for the last file on it to be closed, bounded)
    subprocess.run(["umount", "-l", str(where)], check=False)
    raise AssertionError(f"cannot unmount {where}: {done.stderr.strip()}")


def mounted_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


@dataclass
class MountedSession:
    """A session mounted for a test."""

    name: str
    home: Path
    lower: Path
    mnt: Path

    @property
    def root(self) -> Path:
        return self.home / "sessions" / self.name

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, home=self.home, check=check)

    def mount(self, *extra: str) -> None:
        self.cli("mount", "--lower", str(self.lower), "--session", self.name, *extra,
                 str(self.mnt))

    def control(self, op: str) -> dict[str, Any]:
        """One request to the mount's daemon over its control socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.root / "run" / "control.sock"))
            sock.sendall(json.dumps({"op": op}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                buf += sock.recv(65536)
        reply: dict[str, Any] = json.loads(buf)
        return reply

    def umount(self) -> None:
        if str(self.mnt) in mounted_points():
            self.cli("umount", str(self.mnt))
        assert str(self.mnt) not in mounted_points(), f"{self.mnt} still mounted"


def tree_state(root: Path, *, xattrs: bool = True) -> dict[str, tuple[object, ...]]:
    """Everything a user can see of a tree: type, mode, content hash, link
    target, user xattrs — keyed by relative path."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    body: object = hashlib.blake2b(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            else:
                body = None
            xs: tuple[tuple[str, bytes], ...] = ()
            if xattrs and not stat.S_ISLNK(st.st_mode):
                xs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False))
                                  for k in os.listxattr(path, follow_symlinks=False)
                                  if k.startswith("user.")))
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, body, xs)
    return out


def hash_tree(root: Path) -> str:
    """One digest over content, modes, times, owners, link targets and all
    xattrs of a tree: equal digests mean the tree was not written."""
    h = hashlib.blake2b()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            h.update(os.path.relpath(path, root).encode())
            h.update(repr((st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                           st.st_ino, st.st_nlink, st.st_rdev)).encode())
            for k in sorted(os.listxattr(path, follow_symlinks=False)):
                h.update(k.encode() + os.getxattr(path, k, follow_symlinks=False))
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    h.update(f.read())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
        h.update(repr(os.lstat(dirpath).st_mtime_ns).encode())
    return h.hexdigest()


def drop_cached_pages(path: Path) -> None:
    """Write back and drop `path`'s pages from the page cache: its next read
    goes to the disk (a layer file behind a mount: the daemon's next read of
    it waits on the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def while_looping(loops: list[Callable[[], None]], main: Callable[[], None]
                  ) -> list[BaseException]:
    """Run `main` while each of `loops` runs again and again in a thread of
    its own; return what the loops raised (the first error of each)."""
    errors: list[BaseException] = []
    done = threading.Event()

    def repeat(loop: Callable[[], None]) -> None:
        try:
            while not done.is_set():
                loop()
        except BaseException as e:  # reported to the caller
            errors.append(e)

    threads = [threading.Thread(target=repeat, args=(loop,)) for loop in loops]
    for t in threads:
        t.start()
    try:
        main()
    finally:
        done.set()
        for t in threads:
            t.join()
    return errors
