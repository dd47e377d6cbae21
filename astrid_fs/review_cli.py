"""CLI verbs that review and land a session: diff, commit, discard, snapshots.

(Filled in by the review/commit issue.)
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the review verbs to the `astrid-fs` parser."""
