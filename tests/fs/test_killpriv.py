"""suid/sgid killed by the daemon (fuse/killpriv.py, shim part 13).

The mount asks for FUSE_HANDLE_KILLPRIV_V2: the kernel then stops probing
`security.capability` before every write (one round trip per append saved),
and in exchange the daemon clears suid/sgid where the kernel flags that the
caller may not keep them. Each test does the same thing to a plain directory
and through a mount, as root and as another user, and the modes must agree:
after writes answered in C (an upper file's fd in the shim's table; a lower
file's first write, copied up by the daemon's callback first: part 14),
truncates and chowns.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mounts import MountedSession

Mount = Callable[..., MountedSession]
NOBODY = 65534
#: Modes a file starts with; every one lets others write, so `nobody` can.
MODES = {"suid": 0o4777, "suid-sgid": 0o6777, "sgid-gx": 0o2777, "sgid-no-gx": 0o2767,
         "sgid-no-gx-ours": 0o2767, "plain": 0o0777}
#: Files of nobody's group (the rest are root's): its sgid without group
#: execute stays when nobody writes, that of root's group goes.
OURS = ("sgid-no-gx-ours",)


def killpriv(s: MountedSession) -> dict[str, int]:
    stats = s.control("stats").get("killpriv")
    assert stats is not None, "suid/sgid not killed by the daemon: is the FUSE shim (v10) loaded?"
    return dict(stats)


def as_nobody(cwd: Path, *argv: str) -> None:
    """argv as uid/gid 65534 in `cwd` (entered before the switch: the test's
    temp dirs are root's, 0700)."""
    subprocess.run(argv, cwd=cwd, user=NOBODY, group=NOBODY, extra_groups=[], check=True,
                   capture_output=True)


def modes(d: Path) -> dict[str, str]:
    return {name: oct(stat.S_IMODE(os.stat(d / name).st_mode)) for name in MODES}


def fill(d: Path) -> None:
    for name, mode in MODES.items():
        (d / name).write_text("x\n")
        if name in OURS:
            os.chown(d / name, 0, NOBODY)
        os.chmod(d / name, mode)


def reset(d: Path) -> None:
    for name, mode in MODES.items():
        os.chmod(d / name, mode)


def plain_and_mount(tmp_path: Path, mount_session: Mount, start: str,
                    *extra: str) -> tuple[Path, MountedSession]:
    """The same files in a plain directory and in a mount: in its lower layer
    (the first write copies up) or in its upper one. The daemon path (part
    13) unless `extra` asks for another."""
    extra = extra or ("--no-passthrough",)
    plain, lower = tmp_path / "plain", tmp_path / "lower"
    plain.mkdir()
    lower.mkdir()
    fill(plain)
    if start == "lower":
        fill(lower)
    s = mount_session(lower, None, *extra)
    if start == "upper":
        fill(s.mnt)
    return plain, s


@pytest.mark.parametrize("start", ["lower", "upper"])
def test_writes_clear_suid_and_sgid_as_on_a_plain_filesystem(
        tmp_path: Path, mount_session: Mount, start: str) -> None:
    plain, s = plain_and_mount(tmp_path, mount_session, start)
    for d in (plain, s.mnt):
        for name in MODES:
            as_nobody(d, "sh", "-c", f"printf y >> {name}")
    assert modes(s.mnt) == modes(plain)
    assert modes(s.root / "upper") == modes(plain)
    assert modes(plain)["suid-sgid"] == "0o777" and modes(plain)["sgid-no-gx"] == "0o767"
    assert modes(plain)["sgid-no-gx-ours"] == "0o2767"
    # Again on files now in the upper layer, whose fds the shim holds: C.
    before = killpriv(s)["killed_in_c"]
    for d in (plain, s.mnt):
        reset(d)
        for name in MODES:
            as_nobody(d, "sh", "-c", f"printf z >> {name}")
    assert modes(s.mnt) == modes(plain)
    assert killpriv(s)["killed_in_c"] > before
    # Root keeps them (CAP_FSETID), here as there.
    for d in (plain, s.mnt):
        reset(d)
        for name in MODES:
            with open(d / name, "a") as f:
                f.write("r")
    assert modes(s.mnt) == modes(plain) == {n: oct(m) for n, m in MODES.items()}
    assert (s.mnt / "suid").read_text() == (plain / "suid").read_text() == "x\nyzr"


@pytest.mark.parametrize("start", ["lower", "upper"])
def test_truncate_and_chown_clear_them_as_on_a_plain_filesystem(
        tmp_path: Path, mount_session: Mount, start: str) -> None:
    plain, s = plain_and_mount(tmp_path, mount_session, start)
    for d in (plain, s.mnt):
        for name in MODES:
            as_nobody(d, "truncate", "-s", "1", name)
    assert modes(s.mnt) == modes(plain)
    assert modes(plain)["suid"] == "0o777"
    for d in (plain, s.mnt):
        reset(d)
        for name in MODES:
            os.chown(d / name, NOBODY, NOBODY)  # root: suid goes all the same
    assert modes(s.mnt) == modes(plain)
    assert modes(plain)["suid"] == "0o777"
    for d in (plain, s.mnt):  # a truncate by root keeps them
        reset(d)
        for name in MODES:
            os.truncate(d / name, 0)
    assert modes(s.mnt) == modes(plain) == {n: oct(m) for n, m in MODES.items()}


def test_appending_to_an_upper_file_probes_for_capabilities_once(
        tmp_path: Path, mount_session: Mount) -> None:
    """The point of it all: the kernel asked GETXATTR security.capability
    before every WRITE; now once, until the file's attributes are refreshed."""
    s = mount_session(None, None, "--no-passthrough")
    log = s.mnt / "log"
    log.write_text("")
    before = killpriv(s)["capability_probes"]
    for i in range(200):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"%d\n" % i)
        finally:
            os.close(fd)
    assert killpriv(s)["capability_probes"] - before <= 2
    assert log.read_text().splitlines() == [str(i) for i in range(200)]
    assert (s.root / "upper" / "log").read_text() == log.read_text()


def passthrough_mount(tmp_path: Path, mount_session: Mount) -> tuple[Path, MountedSession]:
    plain, s = plain_and_mount(tmp_path, mount_session, "upper", "--passthrough")
    path = s.control("stats")["data_path"]
    if path["data_path"] != "passthrough":
        pytest.fail(f"passthrough: {path['reason']}")  # root, CONFIG_FUSE_PASSTHROUGH here
    return plain, s


def on_passthrough(s: MountedSession, name: str) -> bool:
    """Does the kernel hold `name` (an upper file) open for passthrough?"""
    ino = os.stat(s.root / "upper" / name).st_ino
    return ino in s.control("held")["upper_inodes"]


def test_under_passthrough_suid_and_sgid_go_as_on_a_plain_filesystem(
        tmp_path: Path, mount_session: Mount) -> None:
    """Passthrough mounts ask for KILLPRIV_V2 too (shim version 16): a file
    with suid or sgid is kept off passthrough, so its WRITEs reach the daemon
    flagged and it kills by the kernel's own rule (the FUSE client's rule,
    used before, kept sgid on a file without group execute when a caller
    outside its group wrote it)."""
    plain, s = passthrough_mount(tmp_path, mount_session)
    for argv in (("sh", "-c", "printf y >> {}"), ("truncate", "-s", "1", "{}"),
                 ("sh", "-c", ": > {}")):
        for d in (plain, s.mnt):
            reset(d)
            for name in MODES:
                as_nobody(d, *(a.format(name) for a in argv))
        assert modes(s.mnt) == modes(s.root / "upper") == modes(plain), argv
        assert modes(plain)["sgid-no-gx"] == "0o767"
        assert modes(plain)["sgid-no-gx-ours"] == "0o2767"
    for d in (plain, s.mnt):  # root keeps them (CAP_FSETID)
        reset(d)
        for name in MODES:
            with open(d / name, "a") as f:
                f.write("r")
    assert modes(s.mnt) == modes(plain) == {n: oct(m) for n, m in MODES.items()}
    # Without the bits the file is on passthrough again after a chmod.
    with open(s.mnt / "suid", "a") as f:
        assert not on_passthrough(s, "suid")
    os.chmod(s.mnt / "suid", 0o777)
    with open(s.mnt / "suid", "a") as f:
        assert on_passthrough(s, "suid")
        f.write("p")
    assert (s.root / "upper" / "suid").read_text().endswith("rp")


def test_under_passthrough_a_large_write_probes_for_capabilities_once(
        tmp_path: Path, mount_session: Mount) -> None:
    """The kernel probed GETXATTR security.capability before every write to
    a passthrough file (backing_file_write_iter calls file_remove_privs on
    the FUSE file): one round trip per 1 MiB of a large write."""
    _plain, s = passthrough_mount(tmp_path, mount_session)
    before = killpriv(s)["capability_probes"]
    chunk = os.urandom(64 << 10)
    fd = os.open(s.mnt / "big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert on_passthrough(s, "big")
        for _ in range(256):
            os.write(fd, chunk)
    finally:
        os.close(fd)
    assert killpriv(s)["capability_probes"] - before <= 2
    assert (s.root / "upper" / "big").read_bytes() == chunk * 256


#: A writer as nobody that opens its file, says so, and writes one byte when
#: told (its fd opened before the chmod it races with).
HOLDER = ("import os, sys\n"
          "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)\n"
          "print('open', flush=True)\n"
          "sys.stdin.readline()\n"
          "os.write(fd, b'w')\n")


@pytest.mark.parametrize("mode", [0o4777, 0o2777, 0o6777], ids=["suid", "sgid", "suid-sgid"])
def test_under_passthrough_a_file_made_suid_while_open_loses_it_on_write(
        tmp_path: Path, mount_session: Mount, mode: int) -> None:
    """A file opened for writing through passthrough, then made suid/sgid
    by root, then written through the older fd: its open keeps the backing,
    which the kernel writes with the credentials the shim registered it
    with (no CAP_FSETID), so the upper's file system clears the bits, as a
    plain file system does for this writer."""
    plain, s = passthrough_mount(tmp_path, mount_session)
    for d in (plain, s.mnt):
        holder = subprocess.Popen(["/usr/bin/python3", "-c", HOLDER, "plain"], cwd=d,
                                  user=NOBODY, group=NOBODY, extra_groups=[],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == b"open\n"
        if d == s.mnt:
            assert on_passthrough(s, "plain")
        os.chmod(d / "plain", mode)
        holder.stdin.write(b"go\n")
        holder.stdin.close()
        assert holder.wait() == 0
    assert modes(plain)["plain"] == "0o777"
    assert modes(s.mnt)["plain"] == modes(s.root / "upper")["plain"] == "0o777"
    assert (s.mnt / "plain").read_text() == (plain / "plain").read_text() == "x\nw"
