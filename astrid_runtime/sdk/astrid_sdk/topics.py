"""NATS-style topic matching, the same rules the kernel's bus applies.

Topics are dot-separated tokens; in a pattern `*` matches exactly one token
and a final `>` matches one or more remaining tokens.
"""

from __future__ import annotations


def matches(pattern: str, topic: str) -> bool:
    """True if `topic` is matched by `pattern`."""
    want = pattern.split(".")
    have = topic.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return i == len(want) - 1 and len(have) > i
        if i >= len(have):
            return False
        if token != "*" and token != have[i]:
            return False
    return len(have) == len(want)


__all__ = ["matches"]
