"""Issue 12, hole 7: the audit log is tamper-evident.

It used to be plain JSON lines that nothing verified. Each attack here
edits the log as someone with write access to it would — change an entry,
delete one, swap two, cut the end off — and `astrid audit verify` names it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from astrid_runtime.approval.audit import AuditLog, head_path, verify
from astrid_runtime.identity import KernelIdentity

ASTRID = [sys.executable, "-m", "astrid_runtime.client_cli"]


def _log(home: Path, n: int = 5) -> Path:
    audit = AuditLog(home / "audit.jsonl")
    for i in range(n):
        audit.record("cap.decision", {"plugin": "filetool", "kind": "fs.commit",
                                      "resource": f"workspace/{i}", "decision": "deny"})
    audit.close()
    return home / "audit.jsonl"


def _key(home: Path) -> bytes:
    return KernelIdentity.load(home).public_key


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_an_untouched_log_verifies_and_continues_across_restarts(tmp_path: Path) -> None:
    path = _log(tmp_path, 3)
    _log(tmp_path, 2)  # a second kernel run appends to the same chain
    verdict = verify(path, _key(tmp_path))
    assert verdict.ok and verdict.entries == 5
    entries = [json.loads(line) for line in _lines(path)]
    assert [e["seq"] for e in entries] == [0, 1, 2, 3, 4]
    assert entries[0]["event"] == "cap.decision" and entries[0]["resource"] == "workspace/0"


def _edit(lines: list[bytes]) -> list[bytes]:
    entry = json.loads(lines[2])
    entry["decision"] = "allow"
    return [*lines[:2], json.dumps(entry, separators=(",", ":")).encode() + b"\n", *lines[3:]]


@pytest.mark.parametrize("attack, tamper, expected", [
    ("edited", _edit, "line 3: signature does not verify"),
    ("deleted", lambda ls: ls[:2] + ls[3:], "line 3: seq 3, expected 2"),
    ("reordered", lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "line 2: seq 2, expected 1"),
    ("truncated", lambda ls: ls[:3], "the log ends at entry 2 but its signed head is at "
                                     "entry 4"),
    ("forged", lambda ls: [*ls, b'{"event":"cap.decision","seq":5}\n'], "line 6: not an "
                                                                        "audit entry"),
])
def test_tampering_is_named(tmp_path: Path, attack: str, tamper: object,
                            expected: str) -> None:
    path = _log(tmp_path)
    path.write_bytes(b"".join(tamper(_lines(path))))  # type: ignore[operator]
    verdict = verify(path, _key(tmp_path))
    assert not verdict.ok
    assert any(expected in p for p in verdict.problems), verdict.problems


def test_another_kernels_key_does_not_verify_and_a_missing_head_is_reported(
        tmp_path: Path) -> None:
    path = _log(tmp_path, 2)
    other = KernelIdentity.from_secret(b"o" * 32).public_key
    assert "signature does not verify" in verify(path, other).problems[0]
    head_path(path).unlink()
    assert "truncation cannot be ruled out" in verify(path, _key(tmp_path)).problems[-1]


def test_astrid_audit_verify(tmp_path: Path) -> None:
    path = _log(tmp_path)

    def astrid(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ASTRID, "audit", "verify", "--home", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=60)

    ok = astrid()
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 5 entries")
    kernel = KernelIdentity.load(tmp_path).kernel_id
    assert astrid("--file", str(path), "--kernel", kernel).returncode == 0
    path.write_bytes(b"".join(_lines(path)[:4]))
    cut = astrid()
    assert cut.returncode == 4
    assert "TAMPERED" in cut.stdout and "signed head is at entry 4" in cut.stdout
    missing = astrid("--file", str(tmp_path / "nothing.jsonl"))
    assert missing.returncode == 1 and "no audit log" in missing.stderr
