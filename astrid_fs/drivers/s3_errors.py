"""obstore's errors as DriverErrors: the one place that reads obstore's
(long, multi-line) error text and decides what a user is told and whether
`RetryPolicy` may retry (Unreachable and Timeout are temporary)."""

from __future__ import annotations

import re

from astrid_fs.drivers.errors import (
    DriverError,
    NotFound,
    PermissionDenied,
    Stale,
    Timeout,
    Unreachable,
)

_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")


def reason_of(text: str) -> str:
    """A short reason from obstore's (long, multi-line) error text."""
    code = _CODE.search(text)
    status = _STATUS.search(text)
    if status:
        return f"HTTP {status.group(1)}" + (f" {code.group(1)}" if code else "")
    lowered = text.lower()
    for needle, reason in (("connection refused", "connection refused"),
                           ("timed out", "timed out"), ("timeout", "timed out"),
                           ("connection reset", "connection reset"),
                           ("dns error", "name not resolved"),
                           ("error sending request", "cannot connect"),
                           ("connection closed", "connection closed"),
                           ("error decoding response body", "connection broke mid-response"),
                           ("error reading a body", "connection broke mid-response")):
        if needle in lowered:
            return reason
    return text.splitlines()[0][:200] if text else "unknown error"


def translate(exc: BaseException, what: str) -> DriverError:
    """The DriverError for an obstore exception; `what` starts the message."""
    text = str(exc)
    reason = reason_of(text)
    status = _STATUS.search(text)
    code = status.group(1) if status else ""
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError) or name == "NotFoundError" or code == "404":
        if "NoSuchBucket" in text:
            return NotFound(f"{what}: bucket does not exist ({reason})")
        return NotFound(f"{what}: not found")
    if name in ("PermissionDeniedError", "UnauthenticatedError") or code in ("401", "403"):
        return PermissionDenied(f"{what}: permission denied ({reason})")
    if code.startswith("5") or code in ("408", "429") or reason in (
            "connection refused", "connection reset", "cannot connect", "connection closed",
            "connection broke mid-response", "name not resolved"):
        return Unreachable(f"{what}: {reason}")
    if reason == "timed out":
        return Timeout(f"{what}: timed out")
    if name == "PreconditionError" or code == "412":
        return Stale(f"{what}: changed on the server ({reason})")
    return DriverError(f"{what}: {reason}")


