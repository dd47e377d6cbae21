"""`astridd`: the kernel daemon (not implemented yet)."""

from __future__ import annotations

import sys


def main() -> int:
    print("astridd: not yet (see the kernel issue)", file=sys.stderr)
    return 1
