"""`astrid approvals`, `approve`, `deny`, `revoke`: a person answering asks from a shell.

    astrid approvals [--json]                 what waits for a person; standing approvals
    astrid approve ID [--session|--always]    allow once (default), for the session, always
    astrid deny ID [REASON ...]               refuse; the reason goes back to the plugin
    astrid revoke GRANT                       forget a session or always approval

They talk to the running kernel's control socket (`astridd`, or `astrid
run`, which serves one too); with no kernel running, `approvals` lists and
`revoke` removes the "always" approvals kept in $ASTRID_HOME. Exit codes as
for every `astrid` verb: 0 ok, 1 refused (no such ask: answered, expired or
never asked), 3 no kernel.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from astrid_runtime.approval.standing import list_offline, revoke_offline
from astrid_runtime.config import default_home
from astrid_runtime.control import ControlClient
from astrid_runtime.errors import KernelUnreachable
from astrid_runtime.identity import KEY_FILE, load_or_create_key

ClientOf = Callable[[argparse.Namespace], ControlClient]


def add_parsers(sub: Any) -> None:
    """Register the verbs on the client's subcommand parsers."""
    lst = sub.add_parser("approvals", help="asks waiting for a person, standing approvals",
                         epilog="example: astrid approvals --json")
    lst.add_argument("--json", action="store_true", help="print the listing as JSON")
    ok = sub.add_parser("approve", help="allow an ask (once, --session or --always)",
                        epilog="example: astrid approve 3f2a91c0 --session")
    ok.add_argument("id")
    scope = ok.add_mutually_exclusive_group()
    scope.add_argument("--session", action="store_true",
                       help="also allow the same request until the kernel stops")
    scope.add_argument("--always", action="store_true",
                       help="also allow the same request from now on (revocable)")
    no = sub.add_parser("deny", help="refuse an ask, with an optional reason",
                        epilog="example: astrid deny 3f2a91c0 not before the review")
    no.add_argument("id")
    no.add_argument("reason", nargs="*", default=[], help="returned to the plugin and audited")
    rv = sub.add_parser("revoke", help="forget a standing (session or always) approval",
                        epilog="example: astrid revoke 9c1d02aa")
    rv.add_argument("id")


def _when(ms: int) -> str:
    left = ms / 1000 - time.time()
    return f"{max(0, int(left))}s left"


def shown(text: object) -> str:
    """`text` safe to print to a person's terminal: a plugin chose it, so control
    characters (newlines, escape sequences that could fake a prompt) are escaped."""
    value = str(text)
    return value if value.isprintable() else json.dumps(value)[1:-1]


def describe(ask: dict[str, Any]) -> str:
    """One line for a person: who wants what, on what, and why it asks."""
    details = ", ".join(f"{shown(k)}={shown(v)}" for k, v in ask.get("details", {}).items()
                        if v)
    line = f"{shown(ask['plugin'])} wants {shown(ask['kind'])} on {shown(ask['resource'])}"
    if details:
        line += f" ({details})"
    if ask.get("reason"):
        line += f" -- {shown(ask['reason'])}"
    return line


def _offline_standing() -> list[dict[str, Any]]:
    """Standing approvals read from $ASTRID_HOME with no kernel running."""
    home = default_home()
    if not (home / KEY_FILE).exists():
        return []
    return [g.to_json() for g in list_offline(home, load_or_create_key(home))]


def cmd_approvals(args: argparse.Namespace, client: ControlClient) -> int:
    try:
        reply = client.request({"op": "approvals"})
    except KernelUnreachable as e:
        # Nothing can be waiting without a kernel; "always" approvals are on disk.
        # Said on stderr, so a mistyped --socket is not read as "nothing waits".
        print(f"astrid: {e}; listing the always approvals kept in {default_home()}",
              file=sys.stderr)
        reply = {"pending": [], "standing": _offline_standing()}
    if args.json:
        print(json.dumps({"pending": reply["pending"], "standing": reply["standing"]},
                         indent=2))
        return 0
    pending, standing = reply["pending"], reply["standing"]
    print(f"{len(pending)} waiting for a person" + (":" if pending else ""))
    for ask in pending:
        print(f"  {ask['id']}  {describe(ask)}  [{_when(ask['deadline_ms'])}]")
    if pending:
        print("  answer: astrid approve ID [--session|--always] | astrid deny ID [REASON]")
    print(f"{len(standing)} standing approval(s)" + (":" if standing else ""))
    for grant in standing:
        print(f"  {grant['id']}  {grant['scope']:<7}  {grant['plugin']} {grant['kind']} on "
              f"{grant['resource']} (by {grant['by']})")
    return 0


def cmd_approve(args: argparse.Namespace, client: ControlClient) -> int:
    answer = "always" if args.always else "session" if args.session else "once"
    reply = client.request({"op": "answer", "id": args.id, "answer": answer})
    print(f"approved ({answer}): {describe(reply['ask'])}")
    return 0


def cmd_deny(args: argparse.Namespace, client: ControlClient) -> int:
    reason = " ".join(args.reason)
    reply = client.request({"op": "answer", "id": args.id, "answer": "deny",
                            "reason": reason})
    print(f"denied: {describe(reply['ask'])}")
    return 0


def cmd_revoke(args: argparse.Namespace, client: ControlClient) -> int:
    try:
        grant = client.request({"op": "revoke", "id": args.id})["revoked"]
    except KernelUnreachable:  # an "always" approval can be revoked with no kernel up
        home = default_home()
        grant = revoke_offline(home, load_or_create_key(home), args.id).to_json()
    print(f"revoked {grant['scope']} approval {grant['id']}: {grant['plugin']} "
          f"{grant['kind']} on {grant['resource']}")
    return 0


def print_status(status: dict[str, Any]) -> None:
    """The approvals and budgets sections of `astrid status` (when the kernel has them)."""
    approvals = status.get("approvals")
    if approvals:
        print(f"approvals: mode {approvals['mode']}, {approvals['pending']} waiting for a "
              f"person, {approvals['standing']} standing")
    for row in status.get("interceptors") or []:
        if "unavailable" in row:
            print(f"interceptor {row['name']}: UNAVAILABLE (denies everything): "
                  f"{row['unavailable']}")
        else:
            last = f", last: {row['last_error']}" if row["last_error"] else ""
            print(f"interceptor {row['name']}: {row['checks']} checks, {row['failures']} "
                  f"failed closed{last}")
    for row in status.get("budgets") or []:
        print(f"budget {row['budget']} ({row['per']} {row['owner']}): {row['spent']:g} spent, "
              f"{row['reserved']:g} reserved, {row['left']:g} of {row['limit']:g} "
              f"{row['unit']} left")


def verbs(client_of: ClientOf) -> dict[str, Callable[[argparse.Namespace], int]]:
    """The verbs for the client's command table."""
    table = {"approvals": cmd_approvals, "approve": cmd_approve, "deny": cmd_deny,
             "revoke": cmd_revoke}
    return {name: (lambda args, fn=fn: fn(args, client_of(args)))  # type: ignore[misc]
            for name, fn in table.items()}


__all__ = ["add_parsers", "describe", "print_status", "shown", "verbs"]
