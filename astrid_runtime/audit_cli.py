"""`astrid audit verify`: check the signed, hash-chained audit trail (approval/audit.py).

    astrid audit verify                      $ASTRID_HOME/audit.jsonl, this home's kernel key
    astrid audit verify --file F --kernel K  another kernel's log, by its public key (hex)

Exit 0 when every entry verifies and the log reaches its signed head; 4
(like `plugin verify`) naming each problem otherwise; 1 when there is no
log to read.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from astrid_runtime.approval.audit import verify
from astrid_runtime.config import default_home
from astrid_runtime.errors import KernelError
from astrid_runtime.identity import KernelIdentity

EXIT_TAMPERED = 4


def add_parser(sub: Any) -> None:
    """The `audit` verb and its `verify` action."""
    audit = sub.add_parser("audit", help="check the audit trail")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    ver = asub.add_parser("verify", help="check signatures, chain and signed head",
                          epilog="example: astrid audit verify --home ~/.local/share/astrid")
    ver.add_argument("--home", type=Path, help="kernel home (default: $ASTRID_HOME)")
    ver.add_argument("--file", type=Path, help="audit log (default: HOME/audit.jsonl)")
    ver.add_argument("--kernel", help="the signing kernel's public key, hex (default: the "
                     "key of HOME)")


def _public_key(args: argparse.Namespace, home: Path) -> bytes:
    if args.kernel:
        try:
            key = bytes.fromhex(args.kernel)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise KernelError(f"--kernel {args.kernel!r}: not a 64 hex digit public key")
        return key
    return KernelIdentity.load(home).public_key


def cmd_audit(args: argparse.Namespace) -> int:
    home = args.home or default_home()
    path = args.file or home / "audit.jsonl"
    if not path.exists():
        raise KernelError(f"{path}: no audit log")
    verdict = verify(path, _public_key(args, home))
    if verdict.ok:
        print(f"ok: {verdict.entries} entries in {path}, signed and chained to the head")
        return 0
    for problem in verdict.problems:
        print(f"TAMPERED {path}: {problem}")
    return EXIT_TAMPERED


def verb() -> Callable[[argparse.Namespace], int]:
    return cmd_audit


__all__ = ["add_parser", "cmd_audit", "verb"]
