#!/usr/bin/env python3
"""Count the FUSE requests astrid-fs serves for each workload of scripts/bench/fs.py.

Run as root, after fs.py has built its data set (same --base, --quick/--full):

    .venv/bin/python scripts/bench/fs_requests.py --quick

For every workload it prints the wall time and the requests the daemon counted
(`{"op": "stats"}` on the session's control socket; the shim's own counters as
`c.*`) during one cold run (after drop_caches) and one warm run; `--leg
astrid-fs-pt` counts a --passthrough mount. A warm workload that still sends LOOKUP, GETATTR,
READ or READDIR requests is one the kernel's caches do not cover.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fs_dataset
import fs_legs
import fs_workloads


def stats(control: str) -> dict[str, int]:
    """The daemon's request counters, with the shim's own (prefixed c.)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(control)
        s.sendall(b'{"op": "stats"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    requests: dict[str, int] = dict(reply.get("requests", {}))
    for part in ("shim_writes", "shim_lookups", "shim_creates", "killpriv", "first_writes"):
        for k, v in (reply.get(part) or {}).items():
            if isinstance(v, int):
                requests[f"c.{k}"] = v
    return requests


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def counted(control: str, fn: Callable[[], None]) -> tuple[float, str]:
    """Run fn; its wall time and the requests it caused, most frequent first."""
    before = stats(control)
    t = fs_workloads.timed(fn)
    d = delta(stats(control), before)
    return t, ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--base", type=Path, default=Path("/tmp/astrid-bench"))
    ap.add_argument("--leg", choices=fs_legs.ASTRID_LEGS, default="astrid-fs")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("fs_requests.py: run as root", file=sys.stderr)
        return 2
    mode = "full" if args.full else "quick"
    sizes = fs_dataset.FULL if args.full else fs_dataset.QUICK
    data = args.base.resolve() / f"data-{mode}"
    fs_dataset.build_dataset(data, sizes)
    scratch = args.base.resolve() / "scratch-requests"
    scratch.mkdir(parents=True, exist_ok=True)
    leg = fs_legs.Leg(args.leg, data, scratch)
    try:
        with leg.view() as (root, wroot):
            control = fs_legs.control_socket(root)
            tree = root / "tree"
            work: list[tuple[str, Callable[[], None]]] = [
                ("read", lambda: fs_workloads.read_file(root / "big")),
                ("find", fs_workloads.cmd(["find", str(tree), "-name", "nomatch*"])),
                ("stat", fs_workloads.cmd(["find", str(tree), "-printf", "%s %m %U %T@\n"])),
                ("grep", fs_workloads.cmd(["grep", "-r", fs_dataset.NEEDLE, str(tree)])),
                ("git status", fs_workloads.git_status(root / "git")),
            ]
            print(f"{'workload':<18} {'seconds':>8}  requests")
            for name, fn in work:
                for temp in ("cold", "warm"):
                    if temp == "cold":
                        fs_dataset.drop_caches()
                    t, counts = counted(control, fn)
                    print(f"{name + ' ' + temp:<18} {t:8.3f}  {counts}")
            cu = wroot / "copyup" / "r0"
            t, counts = counted(control, lambda: fs_workloads.append_each(cu))
            print(f"{'copy-up':<18} {t:8.3f}  {counts}")
            t, counts = counted(control, lambda: fs_workloads.append_each(cu))
            print(f"{'append upper':<18} {t:8.3f}  {counts}")
            t, counts = counted(
                control, lambda: fs_workloads.write_file(wroot / "w", min(sizes.big_mib, 256)))
            print(f"{'write (<=256MiB)':<18} {t:8.3f}  {counts}")
            os.unlink(wroot / "w")
    finally:
        leg.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
