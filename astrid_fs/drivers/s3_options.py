"""The `s3` driver's options: the mounts.toml keys it takes, typed and checked,
and the `s3://bucket/prefix` source it parses. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from astrid_fs.drivers.base import Options, check_rel
from astrid_fs.drivers.errors import ConfigError, InvalidPath


@dataclass(frozen=True)
class S3Options:
    """The `s3` driver's options (mounts.toml keys of the same names)."""

    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    anonymous: bool = False
    virtual_hosted: bool = False
    connect_timeout_s: float = 5.0
    timeout_s: float = 30.0
    retries: int = 4
    retry_deadline_s: float = 20.0
    multipart_threshold_mib: int = 64
    part_size_mib: int = 8
    read_window_mib: int = 16
    read_depth: int = 4
    threads: int = 8
    file_mode: int = 0o644
    dir_mode: int = 0o755

    @classmethod
    def from_options(cls, options: Options) -> S3Options:
        """Typed options from a mounts.toml table; ConfigError names a bad key."""
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            if key not in OPTION_TYPES:
                hint = " (credentials come from the AWS chain, never mounts.toml)" \
                    if "key" in key or "secret" in key or "token" in key else ""
                raise ConfigError(f"s3 driver has no option {key!r}{hint}")
            want = OPTION_TYPES[key]
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if want is str and key in ("file_mode", "dir_mode"):
                want = int
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ConfigError(f"s3 option {key!r} must be {want.__name__}, "
                                  f"not {type(value).__name__}")
            kwargs[key] = value
        opts = cls(**kwargs)
        for key in ("connect_timeout_s", "timeout_s", "retry_deadline_s"):
            if getattr(opts, key) <= 0:
                raise ConfigError(f"s3 option {key!r} must be positive")
        for key in ("retries", "part_size_mib", "read_window_mib", "read_depth", "threads"):
            if getattr(opts, key) < (0 if key == "retries" else 1):
                raise ConfigError(f"s3 option {key!r} is out of range")
        if opts.part_size_mib < 5:
            raise ConfigError("s3 option 'part_size_mib' must be at least 5 (S3's minimum)")
        return opts


OPTION_TYPES: dict[str, type] = {
    "endpoint": str, "region": str, "profile": str, "anonymous": bool,
    "virtual_hosted": bool, "connect_timeout_s": float, "timeout_s": float,
    "retries": int, "retry_deadline_s": float, "multipart_threshold_mib": int,
    "part_size_mib": int, "read_window_mib": int, "read_depth": int, "threads": int,
    "file_mode": int, "dir_mode": int,
}


def parse_source(source: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket[/prefix]`; ConfigError otherwise."""
    parts = urlsplit(source)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"{source!r}: expected s3://BUCKET[/PREFIX]")
    if parts.query or parts.fragment:
        raise ConfigError(f"{source!r}: put options in the mount entry, not the URL")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            check_rel(prefix)
        except InvalidPath:
            raise ConfigError(f"{source!r}: malformed prefix") from None
    return parts.netloc, prefix


