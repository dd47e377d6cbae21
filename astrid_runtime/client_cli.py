"""`astrid`: the kernel client (not implemented yet)."""

from __future__ import annotations

import sys


def main() -> int:
    print("astrid: not yet (see the kernel issue)", file=sys.stderr)
    return 1
