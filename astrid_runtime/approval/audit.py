"""The audit trail: one signed, hash-chained line per decision or refusal.

Every capability decision (`cap.decision`), token check (`cap.check`) and
refused VFS call (`vfs.refused`) becomes a JSON object on one line,
`{"ts", "event", ...fields, "seq", "prev", "sig"}`, appended to the audit
file (when one is configured: `$ASTRID_HOME/audit.jsonl` for `astrid run`)
and logged to the `astrid.audit` logger at info level. Lines are written
whole with one `write` on an `O_APPEND` fd, so concurrent writers never
interleave within a line. Thread-safe; host functions call it from guest
threads.

Tamper evidence (issue 12):

- `seq` counts entries from 0; `prev` is the blake3 of the previous line's
  bytes (64 zeros for the first), so an entry edited, deleted or moved
  breaks the chain at the next one;
- `sig` is the kernel's ed25519 signature (identity.py) of the line's
  canonical JSON without `sig`, so an edited entry fails its own check and
  nobody without the kernel key can write a valid one;
- the head file (`audit.jsonl.head`, replaced atomically after every
  append) holds the last `seq` and line hash, signed, with the kernel's
  public key: a log cut short no longer reaches its signed head.

`verify(path, public_key)` checks all of it (`astrid audit verify`). What it
cannot see: someone holding the kernel key, or a log and head both rolled
back together to an earlier state that was once genuine (keep a copy of
the head elsewhere to detect that).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from astrid_runtime.atomic import write_atomic
from astrid_runtime.identity import KernelIdentity, verify_signature

LOGGER = "astrid.audit"
HEAD_SUFFIX = ".head"
GENESIS = "0" * 64
#: The fields the chain adds to each line (an event's own fields may not use them).
CHAIN_FIELDS = ("seq", "prev", "sig")


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, default=str, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def head_path(path: Path) -> Path:
    return path.with_name(path.name + HEAD_SUFFIX)


def _head_material(seq: int, line_hash: str) -> bytes:
    return f"astrid audit head v1\0{seq}\0{line_hash}".encode()


def _last_line(path: Path) -> bytes | None:
    """The last complete line of `path` (None for an empty or missing file), read backwards."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return None
    with f:
        pos = f.seek(0, os.SEEK_END)
        tail = b""
        while pos > 0:
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
            end = tail.rfind(b"\n")  # complete lines end before it
            if end < 0:
                continue
            start = tail.rfind(b"\n", 0, end)
            if start >= 0 or pos == 0:
                return tail[start + 1:end] or None
        return None


class AuditLog:
    """Appends audit lines to `path` (if any) and the `astrid.audit` logger.

    `identity` signs the lines; without one, the identity of the home that
    holds `path` (`path.parent/kernel.key`) is used, created if missing.
    A log that already exists is continued: its chain goes on from its last line.
    """

    def __init__(self, path: Path | None = None, identity: KernelIdentity | None = None):
        self.path = path
        self._logger = logging.getLogger(LOGGER)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity = identity
        self._seq = 0
        self._prev = GENESIS
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if self._identity is None:
                self._identity = KernelIdentity.load(path.parent)
            last = _last_line(path)
            if last is not None:
                self._seq = int(json.loads(last).get("seq", -1)) + 1
                self._prev = blake3.blake3(last).hexdigest()
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
        self.lines: list[dict[str, Any]] = []  # the last lines, for status and tests
        self.keep = 1000

    def _chain(self, line: dict[str, Any]) -> bytes:
        """Seal `line` into the chain (lock held): the bytes to append."""
        assert self._identity is not None
        line["seq"], line["prev"] = self._seq, self._prev
        line["sig"] = _b64(self._identity.sign(_canonical(line)))
        encoded = _canonical(line)
        self._seq += 1
        self._prev = blake3.blake3(encoded).hexdigest()
        return encoded + b"\n"

    def _write_head(self) -> None:
        assert self._identity is not None and self.path is not None
        last = self._seq - 1
        head = {"seq": last, "hash": self._prev, "kernel": self._identity.kernel_id,
                "sig": _b64(self._identity.sign(_head_material(last, self._prev)))}
        write_atomic(head_path(self.path), _canonical(head) + b"\n")

    def record(self, event: str, fields: dict[str, Any]) -> None:
        """One audit line. Never raises for an I/O failure (it is logged instead)."""
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event,
                **{k: v for k, v in fields.items() if k not in CHAIN_FIELDS}}
        self._logger.info(event, extra={"astrid_fields": fields})
        with self._lock:
            self.lines.append(line)
            del self.lines[:-self.keep]
            if self._fd is not None:
                try:
                    os.write(self._fd, self._chain(line))
                    self._write_head()
                except OSError as e:
                    self._logger.error("audit.write_failed", extra={"astrid_fields": {
                        "path": str(self.path), "error": e.strerror}})

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


@dataclass(frozen=True)
class Verdict:
    """What `verify` found: entries checked, and every problem (empty: intact)."""

    entries: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_line(n: int, raw: bytes, prev: str, public_key: bytes) -> list[str]:
    try:
        entry = json.loads(raw)
        sig = _unb64(str(entry.pop("sig")))
        seq, chained = entry["seq"], entry["prev"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        return [f"line {n + 1}: not an audit entry (unsigned or malformed)"]
    problems = []
    if seq != n:
        problems.append(f"line {n + 1}: seq {seq}, expected {n} (an entry deleted, "
                        "inserted or moved before it)")
    if chained != prev:
        problems.append(f"line {n + 1}: does not chain to the line before it (an entry "
                        "deleted, inserted, edited or moved)")
    if not verify_signature(public_key, _canonical(entry), sig):
        problems.append(f"line {n + 1}: signature does not verify (edited, or not "
                        "written by this kernel)")
    return problems


def verify(path: Path, public_key: bytes) -> Verdict:
    """Check every line's signature and chain, and that the log reaches its signed head."""
    raw = path.read_bytes()
    problems: list[str] = []
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        problems.append(f"line {len(lines)}: torn (no newline at the end)")
    prev = GENESIS
    for n, line in enumerate(lines):
        problems += _check_line(n, line, prev, public_key)
        prev = blake3.blake3(line).hexdigest()
    try:
        head = json.loads(head_path(path).read_bytes())
        head_ok = verify_signature(public_key, _head_material(int(head["seq"]), head["hash"]),
                                   _unb64(head["sig"]))
    except FileNotFoundError:
        problems.append(f"{head_path(path).name} is missing: truncation cannot be ruled out")
        return Verdict(len(lines), tuple(problems))
    except (ValueError, KeyError, TypeError, binascii.Error):
        head_ok, head = False, {}
    if not head_ok:
        problems.append(f"{head_path(path).name}: signature does not verify")
    elif int(head["seq"]) != len(lines) - 1 or head["hash"] != prev:
        problems.append(f"the log ends at entry {len(lines) - 1} but its signed head is at "
                        f"entry {head['seq']} (truncated, or entries removed from the end)")
    return Verdict(len(lines), tuple(problems))


__all__ = ["LOGGER", "AuditLog", "Verdict", "head_path", "verify"]
