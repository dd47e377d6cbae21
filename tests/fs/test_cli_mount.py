"""`astrid-fs mount / umount / status` from the outside: bad input gets one
clear line and a non-zero exit with nothing created; a killed daemon's mount
is cleaned up by umount with the session's data intact; the mount.fuse3
helper form works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mounts import (
    MountedSession,
    mounted_points,
    require_fuse,
    ring_threads,
    run_cli,
)

Mount = Callable[..., MountedSession]


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("astrid-fs: "), lines[0]
    assert "Traceback" not in result.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def dirs(tmp_path: Path, astrid_home: Path) -> tuple[Path, Path, Path]:
    require_fuse()
    lower, mnt = tmp_path / "lower", tmp_path / "mnt"
    lower.mkdir()
    mnt.mkdir()
    return astrid_home, lower, mnt


def sessions(home: Path) -> list[str]:
    d = home / "sessions"
    return sorted(os.listdir(d)) if d.exists() else []


def test_missing_lower(dirs: tuple[Path, Path, Path]) -> None:
    home, lower, mnt = dirs
    r = run_cli("mount", "--lower", str(lower / "nope"), "--session", "x", str(mnt),
                home=home, check=False)
    one_line_error(r, "does not exist")
    assert sessions(home) == []


def test_lower_not_a_directory(dirs: tuple[Path, Path, Path]) -> None:
    home, lower, mnt = dirs
    (lower / "file").write_text("x")
    r = run_cli("mount", "--lower", str(lower / "file"), "--session", "x", str(mnt),
                home=home, check=False)
    one_line_error(r, "not a directory")
    assert sessions(home) == []


def test_missing_mountpoint(dirs: tuple[Path, Path, Path]) -> None:
    home, lower, mnt = dirs
    r = run_cli("mount", "--lower", str(lower), "--session", "x", str(mnt / "nope"),
                home=home, check=False)
    one_line_error(r, "does not exist")
    assert sessions(home) == []


def test_session_name_with_slash(dirs: tuple[Path, Path, Path]) -> None:
    home, lower, mnt = dirs
    r = run_cli("mount", "--lower", str(lower), "--session", "a/b", str(mnt),
                home=home, check=False)
    one_line_error(r, "invalid session name")
    assert r.returncode == 2
    assert sessions(home) == []


def test_already_mounted_mountpoint_and_session(tmp_path: Path, mount_session: Mount) -> None:
    s = mount_session()
    other_lower = tmp_path / "other"
    other_lower.mkdir()
    r = run_cli("mount", "--lower", str(other_lower), "--session", "fresh", str(s.mnt),
                home=s.home, check=False)
    one_line_error(r, "already a mount point")
    assert "fresh" not in sessions(s.home)
    second = tmp_path / "second"
    second.mkdir()
    r = run_cli("mount", "--lower", str(s.lower), "--session", s.name, str(second),
                home=s.home, check=False)
    one_line_error(r, "already mounted")


def test_no_dev_fuse_is_one_line(dirs: tuple[Path, Path, Path]) -> None:
    # Without /dev/fuse visible (a private mount namespace hides it), mount
    # must fail cleanly; unshare gives us that namespace for real.
    home, lower, mnt = dirs
    script = ("mount -t tmpfs none /dev && exec " + " ".join(
        [sys.executable, "-m", "astrid_fs.cli", "mount", "--lower", str(lower),
         "--session", "nofuse", str(mnt)]))
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, env={**os.environ, "ASTRID_HOME": str(home)},
                       check=False, timeout=60)
    one_line_error(r, "/dev/fuse")
    assert sessions(home) == []


def test_status_json_counts_changes(mount_session: Mount) -> None:
    s = mount_session()
    (s.mnt / "a").write_text("a")
    os.mkdir(s.mnt / "d")
    r = s.cli("status", "--json")
    (row,) = json.loads(r.stdout)["sessions"]
    assert row["name"] == s.name and row["mounted"] and row["changes"] == 2
    assert row["mountpoint"] == str(s.mnt)
    s.umount()
    (row,) = json.loads(s.cli("status", "--json").stdout)["sessions"]
    assert not row["mounted"] and row["changes"] == 2


def test_killed_daemon_is_cleaned_up_by_umount(mount_session: Mount) -> None:
    s = mount_session()
    (s.mnt / "kept").write_text("data")
    (row,) = json.loads(s.cli("status", "--json").stdout)["sessions"]
    os.kill(row["pid"], signal.SIGKILL)
    _wait_dead(row["pid"])
    assert str(s.mnt) in mounted_points()
    r = s.cli("mount", "--lower", str(s.lower), "--session", s.name, str(s.mnt), check=False)
    one_line_error(r, "dead mount", "astrid-fs umount")
    s.cli("umount", s.name)
    assert str(s.mnt) not in mounted_points()
    assert (s.upper / "kept").read_text() == "data"
    s.mount()
    assert (s.mnt / "kept").read_text() == "data"


def _wait_dead(pid: int) -> None:
    # The daemon is not our child: waitpid is unavailable, so poll /proc
    # until the kernel reaps it (SIGKILL cannot be ignored).
    while os.path.exists(f"/proc/{pid}") and "zombie" not in _proc_state(pid):
        os.sched_yield()


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((line for line in f if line.startswith("State:")), "")
    except FileNotFoundError:
        return "zombie"


def test_umount_returns_once_the_daemon_has_exited_though_not_yet_reaped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A detached daemon's parent is init, which may reap it seconds after it exits
    (this machine's init: ~1.5 s, every umount): umount waits for the exit, not the
    reaping. The daemon here is a child this test does not reap: a zombie."""
    import threading

    from astrid_fs.cli import mount as mount_cli
    from astrid_fs.session import MountState

    monkeypatch.setattr(mount_cli, "UMOUNT_WAIT_S", 3600.0)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, kept unreaped
        returned: list[bool] = []

        def wait() -> None:
            mount_cli._wait_exit(MountState(zombie.pid, "/nowhere", ""))
            returned.append(True)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiter.join(timeout=60)  # a bound: it waited for the reaping (an hour) if alive
        assert returned == [True], "umount waits for the daemon to be reaped"
    finally:
        zombie.wait()


def test_umount_of_unmounted_target(dirs: tuple[Path, Path, Path]) -> None:
    home, _, mnt = dirs
    one_line_error(run_cli("umount", str(mnt), home=home, check=False), "not mounted")


def _ring_threads(mnt: Path) -> list[int]:
    """The io_uring queue threads of the daemon serving `mnt` (its command
    line carries the mount point)."""
    tids: list[int] = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(mnt).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                tids += ring_threads(int(pid))
        except OSError:
            continue
    return tids


@pytest.mark.parametrize("extra", ["", ",no_io_uring"])
def test_mount_helper_form(tmp_path: Path, extra: str, monkeypatch: pytest.MonkeyPatch) -> None:
    require_fuse()
    monkeypatch.delenv("ASTRID_FS_IO_URING", raising=False)
    lower, upper, work, mnt = (tmp_path / n for n in ("l", "u", "w", "m"))
    for d in (lower, upper, work, mnt):
        d.mkdir()
    (lower / "f").write_text("lower")
    subprocess.run(["mount", "-t", "fuse.astrid-fs", "astrid-fs", str(mnt), "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}{extra}"],
                   check=True, timeout=60)
    try:
        assert (mnt / "f").read_text() == "lower"
        (mnt / "f").write_text("upper")
        assert (upper / "f").read_text() == "upper"
        assert (lower / "f").read_text() == "lower"
        if extra:
            assert _ring_threads(mnt) == []
        elif Path("/sys/module/fuse/parameters/enable_uring").exists():
            assert _ring_threads(mnt), "no io_uring queue threads by default"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert str(mnt) not in mounted_points()


def test_mount_from_a_project_holding_an_astrid_fs_package_runs_the_installed_daemon(
        dirs: tuple[Path, Path, Path], astrid_home: Path) -> None:
    """An agent's tree can hold an `astrid_fs/` package, and a user runs
    `astrid-fs mount` (as root) from the project dir. The daemon is started
    with `python -P -m`, so the directory it is started from is not on its
    import path: the installed daemon runs, the planted one never does."""
    require_fuse()
    _, lower, mnt = dirs
    planted = lower / "astrid_fs"
    (planted / "fuse").mkdir(parents=True)
    marker = lower.parent / "planted-code-ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (planted / "fuse" / "__init__.py").write_text("")
    (planted / "fuse" / "daemon.py").write_text("raise SystemExit('planted daemon')\n")
    program = Path(sys.executable).parent / "astrid-fs"
    env = {**os.environ, "ASTRID_HOME": str(astrid_home)}
    done = subprocess.run([str(program), "mount", "--lower", str(lower), "--session", "p",
                           str(mnt)], cwd=lower, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL,
                          timeout=120, check=False)
    try:
        log = astrid_home / "sessions" / "p" / "run" / "daemon.log"
        assert done.returncode == 0, done.stderr + (log.read_text() if log.exists() else "")
        assert str(mnt) in mounted_points()
        assert (mnt / "astrid_fs" / "fuse" / "daemon.py").exists()  # served, not run
    finally:
        run_cli("umount", str(mnt), home=astrid_home, check=False)
    assert not marker.exists()


def test_a_control_socket_path_too_long_is_one_line_before_anything_is_made(
        dirs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A deep ASTRID_HOME puts the session's control socket past what a Unix
    socket address holds: the daemon could not listen there. Before this
    check it exited 1 pointing at a log that the cleanup had removed."""
    _, lower, mnt = dirs
    home = tmp_path / ("h" * 80)
    home.mkdir()
    done = run_cli("mount", "--lower", str(lower), "--session", "s", str(mnt), home=home,
                   check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Unix socket" in lines[0] and "ASTRID_HOME" in lines[0], lines
    assert str(mnt) not in mounted_points()
    assert not (home / "sessions" / "s").exists()
