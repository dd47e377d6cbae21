"""`astrid-fs drivers`: list the lower-layer drivers installed here.

Drivers come from the `astrid_fs.drivers` entry-point group (docs/drivers.md);
a driver that fails to load is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from astrid_fs.drivers.registry import Registry


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `drivers` to the `astrid-fs` parser."""
    p = sub.add_parser(
        "drivers", help="list installed lower-layer drivers (local, s3, plug-ins)",
        description="List the drivers mounts.toml sources can use, by URL scheme.",
        epilog="example: astrid-fs drivers --json",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_drivers)


def cmd_drivers(args: argparse.Namespace) -> int:
    registry = Registry()
    rows = [
        {"name": reg.spec.name,
         "schemes": [s + "://" if s else "(plain path)" for s in reg.spec.schemes],
         "summary": reg.spec.summary,
         "options": list(reg.spec.option_names),
         "entry_point": reg.origin}
        for reg in sorted(registry.drivers.values(), key=lambda r: r.spec.name)
    ]
    if args.json:
        print(json.dumps({"drivers": rows, "errors": registry.errors}, indent=2))
    else:
        width = max((len(r["name"]) for r in rows), default=4)
        for r in rows:
            print(f"{r['name']:<{width}}  {', '.join(r['schemes'])}  {r['summary']}")
            if r["options"]:
                print(f"{'':<{width}}  options: {', '.join(r['options'])}")
        for err in registry.errors:
            print(f"astrid-fs: warning: {err}", file=sys.stderr)
    return 1 if registry.errors and not rows else 0
