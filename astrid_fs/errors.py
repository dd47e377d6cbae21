"""The exception hierarchy of astrid_fs.

Every error a user can cause is an `AstridFsError` whose message is one line
that says what is wrong and, where it helps, what to do. The CLI prints that
line and exits with `exit_code`; it never prints a traceback for these.
"""

from __future__ import annotations


class AstridFsError(Exception):
    """Base of every user-facing astrid_fs error."""

    exit_code = 1


class UsageError(AstridFsError):
    """Bad arguments or bad input files."""

    exit_code = 2


class SessionError(AstridFsError):
    """A session is missing, malformed, busy or in the wrong state."""


class NoSuchSession(SessionError):
    """A session name that names no session: bad usage, like an unknown path."""

    exit_code = 2


class MountError(AstridFsError):
    """A mount could not be set up or torn down."""


class ConflictError(AstridFsError):
    """The lower layer changed under a session change (commit refuses).
    `conflicts` lists (path, why) for scripts (`commit --json`)."""

    exit_code = 3

    def __init__(self, message: str, conflicts: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.conflicts = conflicts
