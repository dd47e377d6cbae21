"""What the CLI hands the FUSE daemon, kept free of the daemon's own
imports (pyfuse3, trio) so that `astrid-fs` verbs start quickly: the
daemon's configuration, and whether passthrough or io_uring is asked for by
default (passthrough: no, unless ASTRID_FS_PASSTHROUGH says so; io_uring:
yes, where the kernel offers it, unless ASTRID_FS_IO_URING=0)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from astrid_fs.overlay.whiteout import XattrNs

#: Environment variable asking for FUSE passthrough by default (passthrough.py).
ENV = "ASTRID_FS_PASSTHROUGH"
#: Environment variable turning FUSE over io_uring off by default (io_uring.py).
IO_URING_ENV = "ASTRID_FS_IO_URING"
_ON = ("1", "yes", "on", "true")
_OFF = ("0", "no", "off", "false")


def _env_word(name: str, env: dict[str, str] | None) -> str:
    return (os.environ if env is None else env).get(name, "").strip().lower()


def requested(env: dict[str, str] | None = None) -> bool:
    """Whether ASTRID_FS_PASSTHROUGH asks for passthrough by default."""
    return _env_word(ENV, env) in _ON


def io_uring_requested(env: dict[str, str] | None = None) -> bool:
    """Whether a mount asks for FUSE over io_uring by default: yes, unless
    ASTRID_FS_IO_URING says 0/no/off/false. (Asking is safe: where the kernel
    has no io_uring for FUSE the mount serves /dev/fuse and says why.)"""
    return _env_word(IO_URING_ENV, env) not in _OFF


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the daemon needs; passed as JSON on its command line."""

    lower: str
    upper: str
    tmp: str
    xattr_ns: XattrNs
    mountpoint: str
    fsname: str
    lower_ttl: float
    log_file: str
    session: str | None = None
    astrid_home: str | None = None
    control: str | None = None
    # The session's recorded mount table (remote sources at virtual paths);
    # credentials are never in it: drivers read their own chains.
    mounts: str | None = None
    # Further lower layers beneath `lower`, top first (lowerdir=A:B:C).
    stack: tuple[str, ...] = ()
    # FUSE passthrough for upper files where the kernel allows it
    # (fuse/passthrough.py); else the daemon path.
    passthrough: bool = False
    # FUSE over io_uring where the kernel offers it (fuse/io_uring.py).
    io_uring: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> DaemonConfig:
        fields = json.loads(raw)
        fields["stack"] = tuple(fields.get("stack") or ())
        return cls(**fields)
