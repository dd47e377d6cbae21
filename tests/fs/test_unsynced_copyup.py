"""Copy-ups without an fsync each (overlay/unsynced.py).

A daemon killed with -9 leaves whole copies (the page cache outlives it);
a machine that goes down may leave a torn one, which the next mount finds
(marker from another boot) and copies up again. Checked on the rules alone
(a torn copy made by hand) and through real mounts: a kill -9 keeps the
session's writes, a simulated power loss gets the lower's bytes back, and a
clean unmount leaves no marker.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from astrid_fs.overlay import unsynced
from astrid_fs.overlay.copyup import copy_up
from astrid_fs.overlay.whiteout import OverlayXattrs, get_origin
from tests.fs.test_cli_mount import _wait_dead
from tests.support.mounts import MountedSession

NAMES = OverlayXattrs("trusted" if os.geteuid() == 0 else "user")


def _layers(tmp_path: Path) -> tuple[bytes, bytes, bytes, bytes]:
    lower, upper, work = (os.fsencode(tmp_path / n) for n in ("lower", "upper", "work"))
    tmp = work + b"/astrid"
    for d in (lower, upper, tmp):
        os.makedirs(d)
    return lower, upper, work, tmp


def _tear(path: bytes) -> None:
    """What a power loss may leave of an unsynced copy: its metadata (origin,
    mtime) but not its data."""
    st = os.stat(path)
    os.truncate(path, 0)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _until_the_clock_passes(path: bytes, scratch: bytes) -> None:
    """Return once a file written now gets a later time than `path`'s ctime, so the
    marker armed next is newer than it (waits on that condition, not a sleep)."""
    ctime = os.lstat(path).st_ctime_ns
    probe = scratch + b"/clock-probe"
    while True:
        with open(probe, "wb"):
            pass
        if os.lstat(probe).st_mtime_ns > ctime:
            os.unlink(probe)
            return


def test_torn_copies_from_a_crashed_boot_are_copied_up_again(tmp_path: Path) -> None:
    lower, upper, work, tmp = _layers(tmp_path)
    for name in (b"torn", b"whole", b"written", b"old"):
        with open(lower + b"/" + name, "wb") as f:
            f.write(b"project " + name + b"\n")
    copy_up(lower + b"/old", upper + b"/old", tmp, NAMES, b"old", sync=True)
    _tear(upper + b"/old")  # before the crashed mount armed: not looked at
    os.utime(upper + b"/old", ns=(1, get_origin(upper + b"/old", NAMES).mtime_ns))  # type: ignore[union-attr]
    _until_the_clock_passes(upper + b"/old", tmp)  # file times are coarse (ms ticks)
    unsynced.arm(work, "boot-before")
    for name in (b"torn", b"whole", b"written"):
        copy_up(lower + b"/" + name, upper + b"/" + name, tmp, NAMES, name, sync=False)
    _tear(upper + b"/torn")
    with open(upper + b"/written", "ab") as f:
        f.write(b"session\n")
    os.utime(upper + b"/written", ns=(1, 2))

    assert unsynced.crashed(work, "boot-before") is None  # a kill -9: page cache intact
    since = unsynced.crashed(work, "boot-after")
    assert since is not None
    recopied: list[bytes] = []

    def recopy(lower_file: bytes, rel: bytes, dest: bytes) -> None:
        recopied.append(rel)
        copy_up(lower_file, dest, tmp, NAMES, rel, sync=True)

    checked = unsynced.check_upper(upper, NAMES, since, lambda rel: lower + b"/" + rel, recopy)
    assert checked.restored == (b"torn",) and recopied == [b"torn"]
    assert checked.suspect == (b"written",)
    assert Path(os.fsdecode(upper + b"/torn")).read_bytes() == b"project torn\n"
    written = Path(os.fsdecode(upper + b"/written")).read_bytes()
    assert written == b"project written\nsession\n"  # reported, never changed
    assert os.path.getsize(upper + b"/old") == 0  # synced by an earlier clean unmount
    unsynced.disarm(work, upper)
    assert not os.path.exists(unsynced.marker_path(work))
    assert unsynced.crashed(work, "boot-after") is None


def _pid(s: MountedSession) -> int:
    (row,) = json.loads(s.cli("status", "--json").stdout)["sessions"]
    return int(row["pid"])


def _marker(s: MountedSession) -> Path:
    return s.root / "work" / os.fsdecode(unsynced.MARKER)


def test_kill_9_keeps_unsynced_copy_ups_and_power_loss_restores_torn_ones(
        tmp_path: Path, mount_session: object) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    for name in ("a", "b"):
        (lower / name).write_bytes(b"project %s\n" % name.encode())
    s: MountedSession = mount_session(lower)  # type: ignore[operator]
    assert _marker(s).read_text().strip() == unsynced.boot_id()
    for name in ("a", "b"):
        with open(s.mnt / name, "ab") as f:
            f.write(b"session\n")
    pid = _pid(s)
    os.kill(pid, signal.SIGKILL)
    _wait_dead(pid)
    s.cli("umount", s.name)
    # kill -9 only: both copies whole, the session's appends kept.
    assert (s.upper / "a").read_bytes() == b"project a\nsession\n"
    # Now what a power loss may leave: "a" torn (its copy-up's metadata on
    # disk, not its data, no later write reached the disk), the marker from
    # another boot.
    st = os.stat(s.upper / "a")
    origin = get_origin(os.fsencode(s.upper / "a"), NAMES)
    assert origin is not None
    os.truncate(s.upper / "a", 3)
    os.utime(s.upper / "a", ns=(st.st_atime_ns, origin.mtime_ns))
    armed = _marker(s).stat()
    _marker(s).write_text("another-boot\n")
    os.utime(_marker(s), ns=(armed.st_atime_ns, armed.st_mtime_ns))
    s.mount()
    assert (s.mnt / "a").read_bytes() == b"project a\n"  # the copy, whole again
    assert (s.mnt / "b").read_bytes() == b"project b\nsession\n"
    assert (lower / "a").read_bytes() == b"project a\n"  # never written
    log = (s.root / "run" / "daemon.log").read_text()
    assert "a was a torn copy-up" in log and "b was written in the crashed mount" in log
    s.umount()
    assert not _marker(s).exists()  # clean unmount: synced, disarmed


def test_a_marker_that_cannot_be_written_keeps_the_fsync_per_copy_up(
        tmp_path: Path, mount_session: object) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "a").write_bytes(b"project a\n")
    s: MountedSession = mount_session(lower)  # type: ignore[operator]
    s.umount()
    (s.root / "work" / (os.fsdecode(unsynced.MARKER) + ".tmp")).mkdir()  # EISDIR for arm
    s.mount()
    with open(s.mnt / "a", "ab") as f:
        f.write(b"session\n")
    assert (s.mnt / "a").read_bytes() == b"project a\nsession\n"
    assert not _marker(s).exists()
    log = (s.root / "run" / "daemon.log").read_text()
    assert "copy-ups are fsync'd one by one" in log
    s.umount()
    assert not _marker(s).exists()
