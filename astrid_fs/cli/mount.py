"""CLI verbs that mount and unmount sessions: mount, umount (status is in
status.py).

Also the mount.fuse3 helper form (`astrid-fs SOURCE MNT -o lowerdir=..,
upperdir=..,workdir=..`), so fstab entries and overlay test suites can use
`mount -t fuse.astrid-fs`. Both start the daemon as a child process and
return once the mount is live (or with the daemon's one-line error).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from astrid_fs.cli import review as review_cli
from astrid_fs.cli import status as status_cli
from astrid_fs.drivers.errors import DriverError
from astrid_fs.errors import AstridFsError, MountError, SessionError, UsageError
from astrid_fs.fuse.config import DaemonConfig, io_uring_requested
from astrid_fs.fuse.config import requested as passthrough_requested
from astrid_fs.fuse.mountinfo import fuse_mount_alive, is_mountpoint
from astrid_fs.fuse.shim import daemon_env, shim_stale
from astrid_fs.overlay.remote import prepare_session_mounts
from astrid_fs.pyexec import python_module
from astrid_fs.review.bases import record_if_fresh
from astrid_fs.session import (
    MountState,
    Session,
    astrid_home,
    check_lower,
    check_name,
    control_socket_in,
    create_or_open_session,
    list_sessions,
    open_session,
    sessions_dir,
)

DEFAULT_LOWER_TTL = 30.0
READY_TIMEOUT_S = 60.0
UMOUNT_WAIT_S = 30.0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add mount, umount and status to the `astrid-fs` parser."""
    p = sub.add_parser(
        "mount", help="mount a session (creating it if needed)",
        description="Create (or reopen) a session over LOWER and mount its merged view.",
        epilog="example: astrid-fs mount --lower ~/project --session fix-bug /tmp/view",
    )
    p.add_argument("--lower", required=True, action="append",
                   help="the project directory (never written); repeat to stack further "
                        "read-only layers beneath it, top first (as lowerdir=A:B)")
    p.add_argument("--session", help="session name (default: LOWERNAME-YYYYMMDD-HHMMSS)")
    p.add_argument("--foreground", action="store_true", help="stay attached until unmounted")
    p.add_argument("--lower-ttl", type=float, default=DEFAULT_LOWER_TTL, metavar="SECONDS",
                   help="how long the kernel may cache lower-layer entries (default: %(default)s)")
    p.add_argument("--mounts", metavar="FILE",
                   help="mount table (mounts.toml): remote sources at virtual paths; "
                        "recorded in the session (docs/drivers.md)")
    p.add_argument("--nonempty", action="store_true",
                   help="mount over a mount point that holds files (hiding them)")
    p.add_argument("--passthrough", action=argparse.BooleanOptionalAction,
                   default=passthrough_requested(),
                   help="let the kernel read and write upper files itself (FUSE passthrough; "
                        "Linux 6.9+, root; default: $ASTRID_FS_PASSTHROUGH)")
    p.add_argument("--io-uring", action=argparse.BooleanOptionalAction,
                   default=io_uring_requested(),
                   help="serve FUSE requests over io_uring, on the CPU that sent each "
                        "(default: on where the kernel offers it, Linux 6.14+, else /dev/fuse; "
                        "ASTRID_FS_IO_URING=0 turns the default off)")
    p.add_argument("mountpoint")
    p.set_defaults(func=cmd_mount)

    for verb in ("umount", "unmount"):
        u = sub.add_parser(verb, help="unmount a session (by mount point or name)",
                           description="Unmount a session; works for a killed daemon too.")
        u.add_argument("target", help="mount point or session name")
        u.add_argument("--lazy", action="store_true", help="detach even if busy")
        u.set_defaults(func=cmd_umount)

    s = sub.add_parser("status", help="list sessions, their mounts and change counts")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=status_cli.cmd_status)


# ---- mount ----------------------------------------------------------------

def _check_fuse_device() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError("/dev/fuse is not accessible to this user")


def _check_mountpoint(mountpoint: str) -> str:
    path = os.path.abspath(mountpoint)
    if is_mountpoint(path):
        if not fuse_mount_alive(path):
            raise MountError(f"{path} holds a dead mount: run 'astrid-fs umount {path}' first")
        raise MountError(f"{path} is already a mount point")
    if not os.path.exists(path):
        raise UsageError(f"mount point {path} does not exist")
    if not os.path.isdir(path):
        raise UsageError(f"mount point {path} is not a directory")
    return path


def _default_name(lower: Path) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = "".join(c if c.isalnum() or c in "._-" else "-" for c in lower.name) or "root"
    return f"{base.lstrip('.-') or 'session'}-{stamp}"


#: The longest path a Unix socket can be bound at (sun_path, with its NUL).
_SOCKET_PATH_MAX = 107


def _check_socket_path(path: Path) -> None:
    """The session's control socket (Session.control_socket) must fit in a
    Unix socket address, or the daemon could not listen on it."""
    n = len(os.fsencode(path))
    if n > _SOCKET_PATH_MAX:
        raise MountError(f"the session's control socket {path} would be {n} bytes long, over "
                         f"the {_SOCKET_PATH_MAX} a Unix socket allows: use a shorter "
                         "ASTRID_HOME or session name")


def _spawn(config: DaemonConfig) -> None:
    """Start the daemon and wait for its "ok" or its one-line error."""
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            python_module("astrid_fs.fuse.daemon", config.to_json(), str(write_fd)),
            pass_fds=(write_fd,), start_new_session=True, env=daemon_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        line = ready.readline().decode(errors="replace").strip()
    if line == "ok":
        if proc.stderr:
            proc.stderr.close()
        return
    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    code = proc.wait()
    if line.startswith("error: "):
        raise MountError(line[len("error: "):])
    last = err.splitlines()[-1] if err else f"see {config.log_file}"
    raise MountError(f"daemon exited with status {code} before mounting: {last}")


def cmd_mount(args: argparse.Namespace) -> int:
    lower = check_lower(args.lower[0])
    stack = tuple(check_lower(extra) for extra in args.lower[1:])
    # (an empty --session "" is a bad name, not a request for the default one)
    name = _default_name(lower) if args.session is None else check_name(args.session)
    mountpoint = _check_mountpoint(args.mountpoint)
    if not args.nonempty and os.listdir(mountpoint):
        raise UsageError(f"mount point {mountpoint} is not empty: its files would be hidden "
                         "while mounted (choose an empty dir, or pass --nonempty)")
    _check_fuse_device()
    if args.lower_ttl < 0:
        raise UsageError("--lower-ttl must be >= 0")
    home = astrid_home()
    _check_socket_path(control_socket_in(sessions_dir(home) / name))
    existed = (sessions_dir(home) / name / "session.toml").exists()
    if existed:
        _check_not_mounted(open_session(name, home))
        # A commit or rollback interrupted by a crash is finished (or rolled
        # back) before the layers are served again.
        review_cli.open_and_recover(name)
    session = create_or_open_session(name, lower, home, stack)
    if stack and args.mounts:
        raise UsageError("--mounts and several --lower layers cannot be combined yet")
    config = DaemonConfig(
        lower=str(session.lower), upper=str(session.upper), tmp=str(session.tmp),
        xattr_ns=session.xattr_ns, mountpoint=mountpoint, fsname=f"astrid-fs:{name}",
        lower_ttl=args.lower_ttl, log_file=str(session.run_dir / "daemon.log"),
        session=name, astrid_home=str(home), control=str(session.control_socket),
        mounts=_prepare_mounts(args.mounts, session, existed),
        stack=tuple(str(p) for p in session.stack),
        passthrough=bool(args.passthrough),
        io_uring=bool(args.io_uring),
    )
    _record_base(session, existed)
    stale = shim_stale()
    if stale:
        print(f"astrid-fs: warning: {stale}", file=sys.stderr)
    if args.foreground:
        print(f"session {name}: mounting on {mountpoint} (Ctrl-C to unmount)", flush=True)
        os.execve(sys.executable,
                  python_module("astrid_fs.fuse.daemon", config.to_json(), "-"),
                  daemon_env())
    try:
        _spawn(config)
    except MountError:
        if not existed:
            shutil.rmtree(session.root, ignore_errors=True)  # nothing half-made
        raise
    if getattr(args, "json", False):
        state = session.mount_state()
        print(json.dumps({"session": name, "mountpoint": mountpoint, "lower": str(lower),
                          "pid": None if state is None else state.pid}))
    elif not getattr(args, "quiet", False):
        print(f"session {name} mounted on {mountpoint}")
    return 0


def _record_base(session: Session, existed: bool) -> None:
    """The session's base (review/bases.py): recorded before the daemon can
    serve a single write, so every later change has something to be judged by."""
    try:
        record_if_fresh(session.root, session.lower, session.upper)
    except (OSError, DriverError) as e:
        if not existed:
            shutil.rmtree(session.root, ignore_errors=True)  # nothing half-made
        raise MountError(f"cannot record the session's base of {session.lower}: {e}") from e


def _prepare_mounts(mounts: str | None, session: Session, existed: bool) -> str | None:
    """Check and record the session's mount table (remote_lower.prepare_session_mounts)."""
    try:
        return prepare_session_mounts(mounts, session.root, session.lower)
    except AstridFsError:
        if not existed:
            shutil.rmtree(session.root, ignore_errors=True)  # nothing half-made
        raise


def _check_not_mounted(session: Session) -> None:
    state = session.mount_state()
    if state is None:
        return
    if state.alive():
        raise SessionError(f"session {session.name} is already mounted on {state.mountpoint}")
    if is_mountpoint(state.mountpoint):
        raise SessionError(
            f"session {session.name}'s daemon died but {state.mountpoint} is still mounted: "
            f"run 'astrid-fs umount {session.name}' first")
    session.clear_mount_state()


# ---- umount ---------------------------------------------------------------

def _find_session(target: str) -> tuple[Session | None, str]:
    """The session a umount target names (by mount point or name)."""
    path = os.path.abspath(target)
    for session in list_sessions():
        state = session.mount_state()
        if session.name == target and state is not None:
            return session, state.mountpoint
        if state is not None and os.path.abspath(state.mountpoint) == path:
            return session, path
    if "/" not in target and (sessions_dir() / target / "session.toml").exists():
        raise SessionError(f"session {target} is not mounted")
    return None, path


def _fusermount(path: str, lazy: bool) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    cmd = [tool, "-u"] + (["-z"] if lazy else []) + [path]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def cmd_umount(args: argparse.Namespace) -> int:
    session, path = _find_session(args.target)
    if not is_mountpoint(path):
        if session is not None:
            session.clear_mount_state()
            print(f"session {session.name}: {path} was not mounted; cleared its state")
            return 0
        raise UsageError(f"{path} is not mounted")
    dead = not fuse_mount_alive(path)
    result = _fusermount(path, lazy=args.lazy or dead)
    if result.returncode != 0:
        msg = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        if "busy" in msg.lower():
            raise MountError(f"{path} is busy (a process uses it); retry or use --lazy")
        raise MountError(f"cannot unmount {path}: {msg}")
    if session is not None:
        state = session.mount_state()
        if state is not None:
            _wait_exit(state)
        session.clear_mount_state()
    if getattr(args, "json", False):
        print(json.dumps({"unmounted": path, "session": None if session is None
                          else session.name, "daemon_was_dead": dead}))
    elif not getattr(args, "quiet", False):
        print(f"unmounted {path}" + (" (daemon was dead; session data kept)" if dead else ""))
    return 0


def _wait_exit(state: MountState) -> None:
    """Give the daemon time to finish after the unmount; then stop it.

    It has finished once it has exited: a zombie its parent has not reaped yet
    counts (a detached daemon's parent is init, which may reap it seconds later).
    A pidfd says so the moment it happens; without one, poll."""
    try:
        pidfd = os.pidfd_open(state.pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd here
        deadline = time.monotonic() + UMOUNT_WAIT_S
        while time.monotonic() < deadline:
            if not state.alive():
                return
            time.sleep(0.05)
    else:
        try:
            if select.select([pidfd], [], [], UMOUNT_WAIT_S)[0]:
                return
        finally:
            os.close(pidfd)
    with contextlib.suppress(ProcessLookupError):
        os.kill(state.pid, signal.SIGTERM)


# ---- mount.fuse3 helper form ----------------------------------------------

def is_mount_helper_form(argv: list[str], verbs: set[str]) -> bool:
    """True for `astrid-fs SOURCE MOUNTPOINT [-o OPTS]` as mount.fuse3 runs it
    (SOURCE is never one of our verbs)."""
    return (len(argv) >= 2 and argv[0] not in verbs and not argv[0].startswith("-")
            and not argv[1].startswith("-"))


def _parse_helper_options(argv: list[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    i = 2
    while i < len(argv):
        arg = argv[i]
        if arg == "-o" and i + 1 < len(argv):
            for item in argv[i + 1].split(","):
                key, _, value = item.partition("=")
                opts[key] = value
            i += 2
        elif arg.startswith("-o"):
            argv = [*argv[: i + 1], arg[2:], *argv[i + 1:]]
            argv[i] = "-o"
        else:
            i += 1
    return opts


def run_mount_helper(argv: list[str]) -> int:
    """Mount LOWER/UPPER/WORK given as overlay-style -o options."""
    source, mountpoint = argv[0], _check_mountpoint(argv[1])
    opts = _parse_helper_options(argv)
    missing = [k for k in ("lowerdir", "upperdir", "workdir") if not opts.get(k)]
    if missing:
        raise UsageError("mount options need " + ", ".join(f"{k}=DIR" for k in missing))
    # lowerdir=A:B:C stacks read-only layers, A on top (as overlayfs).
    lowers = [check_lower(d) for d in opts["lowerdir"].split(":")]
    lower = lowers[0]
    upper, work = Path(opts["upperdir"]).resolve(), Path(opts["workdir"]).resolve()
    for label, d in (("upperdir", upper), ("workdir", work)):
        if not d.is_dir():
            raise UsageError(f"{label} {d} is not a directory")
    if upper.stat().st_dev != work.stat().st_dev:
        raise UsageError("upperdir and workdir must be on the same filesystem")
    _check_fuse_device()
    tmp = work / "astrid"
    config = DaemonConfig(
        lower=str(lower), upper=str(upper), tmp=str(tmp),
        xattr_ns="user" if "userxattr" in opts else "trusted",
        mountpoint=mountpoint, fsname=source,
        lower_ttl=float(opts.get("lower_ttl", DEFAULT_LOWER_TTL)),
        log_file=str(work / "astrid-fs.log"),
        stack=tuple(str(d) for d in lowers[1:]),
        passthrough="passthrough" in opts or passthrough_requested(),
        io_uring="no_io_uring" not in opts and ("io_uring" in opts or io_uring_requested()),
    )
    tmp.mkdir(exist_ok=True)
    _spawn(config)
    return 0
