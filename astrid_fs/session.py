"""Sessions: one directory per session under $ASTRID_HOME/sessions/NAME.

A session holds the upper layer, the work dir, `session.toml` (what it is
over) and, while mounted, `run/state.json`. This module creates, opens and
lists sessions and reads their mount state; it does not mount anything.
Layout: docs/design/upper-format.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from astrid_fs.durable import write_atomic
from astrid_fs.errors import NoSuchSession, SessionError, UsageError
from astrid_fs.overlay.whiteout import OverlayXattrs, XattrNs, default_xattr_ns

FORMAT = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def astrid_home() -> Path:
    """$ASTRID_HOME, or ~/.local/share/astrid."""
    env = os.environ.get("ASTRID_HOME")
    if env:
        return Path(env).absolute()
    return Path.home() / ".local" / "share" / "astrid"


def sessions_dir(home: Path | None = None) -> Path:
    return (home or astrid_home()) / "sessions"


def control_socket_in(root: Path) -> Path:
    """Where the daemon of the session whose directory is `root` listens
    (`Session.control_socket`; for checks made before the session exists)."""
    return root / "run" / "control.sock"


def check_name(name: str) -> str:
    """Return `name` if it is a valid session name, else raise UsageError."""
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise UsageError(
            f"invalid session name {name!r}: use letters, digits, '.', '_' or '-' "
            "(no '/', at most 100 characters, not starting with '.' or '-')"
        )
    return name


@dataclass(frozen=True)
class MountState:
    """What `run/state.json` says about a live (or dead) mount of a session."""

    pid: int
    mountpoint: str
    control: str

    def alive(self) -> bool:
        """Is the recorded daemon still running? A killed daemon not yet
        reaped (a zombie) or a pid reused by another program is not."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                # "pid (comm) S ...": the state follows the last ')'.
                if f.read().rpartition(b")")[2].split()[0] in (b"Z", b"X"):
                    return False
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                return b"astrid" in f.read()
        except (OSError, IndexError):
            return True  # no /proc to ask: trust the signal check


@dataclass(frozen=True)
class Session:
    """A session directory and what `session.toml` records about it."""

    name: str
    root: Path
    lower: Path
    created: str
    xattr_ns: XattrNs
    # Further read-only lower layers beneath `lower`, top first (stacked
    # sessions: `astrid-fs mount --lower A --lower B`).
    stack: tuple[Path, ...] = ()

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def tmp(self) -> Path:
        """Copy-up temp dir: inside work/, on the upper's filesystem."""
        return self.root / "work" / "astrid"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def journal_dir(self) -> Path:
        return self.root / "journal"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def control_socket(self) -> Path:
        return control_socket_in(self.root)

    @property
    def xattrs(self) -> OverlayXattrs:
        return OverlayXattrs(self.xattr_ns)

    def mount_state(self) -> MountState | None:
        """The recorded mount, or None. The daemon may be dead: check `.alive()`."""
        try:
            raw = json.loads(self.state_file.read_text())
            return MountState(int(raw["pid"]), str(raw["mountpoint"]), str(raw["control"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise SessionError(f"session {self.name}: malformed {self.state_file}: {e}") from e

    def write_mount_state(self, state: MountState) -> None:
        self.run_dir.mkdir(exist_ok=True)
        body = {"pid": state.pid, "mountpoint": state.mountpoint, "control": state.control}
        write_atomic(self.state_file, json.dumps(body).encode())

    def clear_mount_state(self) -> None:
        self.state_file.unlink(missing_ok=True)


def _toml_str(value: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=False)


def _write_session_toml(root: Path, lower: Path, created: str, ns: XattrNs,
                        stack: tuple[Path, ...] = ()) -> None:
    text = (
        f"format = {FORMAT}\n"
        f"name = {_toml_str(root.name)}\n"
        f"lower = {_toml_str(str(lower))}\n"
        f"created = {_toml_str(created)}\n"
        f"xattr_ns = {_toml_str(ns)}\n"
    )
    if stack:
        text += f"stack = [{', '.join(_toml_str(str(p)) for p in stack)}]\n"
    write_atomic(root / "session.toml", text.encode())


def check_lower(lower: str | os.PathLike[str]) -> Path:
    """Resolve and validate a lower directory, or raise UsageError."""
    path = Path(lower).expanduser()
    if not path.exists():
        raise UsageError(f"lower directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise UsageError(f"lower {str(path)!r} is not a directory")
    return path.resolve()


def open_session(name: str, home: Path | None = None) -> Session:
    """Open an existing session, or raise SessionError."""
    root = sessions_dir(home) / check_name(name)
    meta = root / "session.toml"
    try:
        raw = tomllib.loads(meta.read_text())
    except FileNotFoundError:
        raise NoSuchSession(f"no session named {name!r} (looked in {root})") from None
    except tomllib.TOMLDecodeError as e:
        raise SessionError(f"session {name}: malformed {meta}: {e}") from e
    try:
        ns = raw["xattr_ns"]
        if ns not in ("trusted", "user"):
            raise ValueError(f"xattr_ns must be 'trusted' or 'user', not {ns!r}")
        stack = tuple(Path(p) for p in raw.get("stack", []))
        return Session(name, root, Path(raw["lower"]), str(raw["created"]), ns, stack)
    except (KeyError, ValueError) as e:
        raise SessionError(f"session {name}: malformed {meta}: {e}") from e


def create_or_open_session(
    name: str, lower: str | os.PathLike[str], home: Path | None = None,
    stack: tuple[str | os.PathLike[str], ...] = (),
) -> Session:
    """Open session `name`; create it over `lower` if it does not exist yet.

    Reopening with a different lower is an error: a session's upper layer only
    makes sense over the lower it was made for.
    """
    check_name(name)
    lower_path = check_lower(lower)
    stack_paths = tuple(check_lower(p) for p in stack)
    root = sessions_dir(home) / name
    if (root / "session.toml").exists():
        session = open_session(name, home)
        if session.lower != lower_path:
            raise SessionError(
                f"session {name} is over {session.lower}, not {lower_path}; "
                "choose another --session name"
            )
        if stack and session.stack != stack_paths:
            raise SessionError(
                f"session {name} stacks {[str(p) for p in session.stack]} beneath its lower, "
                f"not {[str(p) for p in stack_paths]}; choose another --session name"
            )
        _ensure_dirs(session)
        return session
    root.mkdir(parents=True, exist_ok=True)
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    ns = default_xattr_ns()
    session = Session(name, root, lower_path, created, ns, stack_paths)
    _ensure_dirs(session)
    # session.toml last: a session without it does not exist yet.
    _write_session_toml(root, lower_path, created, ns, stack_paths)
    return session


def _ensure_dirs(session: Session) -> None:
    for d in (session.upper, session.work, session.tmp, session.run_dir,
              session.journal_dir, session.snapshots_dir):
        d.mkdir(parents=True, exist_ok=True)


def list_sessions(home: Path | None = None) -> Iterator[Session]:
    """Every well-formed session under $ASTRID_HOME, sorted by name."""
    base = sessions_dir(home)
    if not base.is_dir():
        return
    for entry in sorted(base.iterdir()):
        if (entry / "session.toml").is_file():
            try:
                yield open_session(entry.name, home)
            except (SessionError, UsageError):
                continue
