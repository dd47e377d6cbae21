"""Driver errors: one type per thing a caller must react to differently.

Every error a driver raises is a `DriverError` carrying the `errno` the FUSE
adapter should answer with, and a one-line message that names the source
(never a credential). `temporary` says whether trying again may succeed;
`astrid_fs.drivers.retry` is the one place that acts on it.
"""

from __future__ import annotations

import errno as _errno

from astrid_fs.errors import AstridFsError


class DriverError(AstridFsError):
    """Base of every driver failure; `errno` is what a file operation returns."""

    errno: int = _errno.EIO
    temporary: bool = False


class NotFound(DriverError):
    """No such file, directory, bucket or prefix."""

    errno = _errno.ENOENT


class NotADirectory(DriverError):
    """A path component (or the listed path) is a file."""

    errno = _errno.ENOTDIR


class IsADirectory(DriverError):
    """A file operation named a directory."""

    errno = _errno.EISDIR


class NotEmpty(DriverError):
    """`delete` of a directory that still has entries."""

    errno = _errno.ENOTEMPTY


class InvalidPath(DriverError):
    """A relative path that is absolute, has '.', '..' or empty components."""

    errno = _errno.EINVAL


class PermissionDenied(DriverError):
    """The source refused (HTTP 401/403, or EACCES/EPERM from the host)."""

    errno = _errno.EACCES


class ReadOnly(DriverError):
    """A write-back call on a mount marked read-only."""

    errno = _errno.EROFS


class NotSupported(DriverError):
    """The source cannot represent this (a symlink or a mode in S3)."""

    errno = _errno.EOPNOTSUPP


class Stale(DriverError):
    """The object changed while a reader had it open (its ETag moved)."""

    errno = _errno.ESTALE


class Unreachable(DriverError):
    """The source did not answer: connection refused or reset, DNS, 5xx."""

    errno = _errno.EIO
    temporary = True


class Timeout(Unreachable):
    """A request ran past its timeout."""

    errno = _errno.EIO
    temporary = True


class ConfigError(DriverError):
    """Bad driver options or source URL (a usage error, exit code 2)."""

    errno = _errno.EINVAL
    exit_code = 2
