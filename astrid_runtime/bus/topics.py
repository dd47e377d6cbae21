"""Bus topics and subscription patterns, NATS style. Pure rules, no I/O.

A topic is dot-separated tokens (`agent.response`). A pattern may use `*`
for exactly one token and `>` (last token only) for one or more trailing
tokens, as NATS does: `a.>` matches `a.b` and `a.b.c` but not `a`.

`covers(grant, pattern)` decides grants: it is true when every topic that
`pattern` can match is also matched by `grant`, so a plugin granted
`notes.>` may subscribe to `notes.*` but not to `>`.
"""

from __future__ import annotations

from astrid_runtime.errors import BusError

MAX_TOPIC_BYTES = 256
MAX_TOKENS = 32
_FORBIDDEN = frozenset(" \t\r\n\x00")


def _tokens(text: str, what: str) -> list[str]:
    if not text:
        raise BusError("invalid", f"empty {what}")
    if len(text.encode()) > MAX_TOPIC_BYTES:
        raise BusError("invalid", f"{what} longer than {MAX_TOPIC_BYTES} bytes")
    if any(ch in _FORBIDDEN for ch in text):
        raise BusError("invalid", f"{what} {text!r} contains whitespace or NUL")
    tokens = text.split(".")
    if len(tokens) > MAX_TOKENS:
        raise BusError("invalid", f"{what} {text!r} has more than {MAX_TOKENS} tokens")
    if any(not t for t in tokens):
        raise BusError("invalid", f"{what} {text!r} has an empty token")
    return tokens


def validate_topic(topic: str) -> list[str]:
    """The tokens of a publishable topic; raises `BusError('invalid')` otherwise."""
    tokens = _tokens(topic, "topic")
    for t in tokens:
        if "*" in t or ">" in t:
            raise BusError("invalid", f"topic {topic!r}: wildcards are for patterns only")
    return tokens


def validate_pattern(pattern: str) -> list[str]:
    """The tokens of a subscription pattern; raises `BusError('invalid')` otherwise."""
    tokens = _tokens(pattern, "pattern")
    for i, t in enumerate(tokens):
        if t in ("*", ">"):
            if t == ">" and i != len(tokens) - 1:
                raise BusError("invalid", f"pattern {pattern!r}: '>' must be the last token")
        elif "*" in t or ">" in t:
            raise BusError("invalid", f"pattern {pattern!r}: wildcards must be whole tokens")
    return tokens


def match_tokens(pattern: list[str], topic: list[str]) -> bool:
    """`matches` on already-split, already-validated tokens."""
    for i, p in enumerate(pattern):
        if p == ">":
            return len(topic) > i
        if i >= len(topic):
            return False
        if p != "*" and p != topic[i]:
            return False
    return len(pattern) == len(topic)


def matches(pattern: str, topic: str) -> bool:
    """True when `topic` matches `pattern` (both validated first)."""
    return match_tokens(validate_pattern(pattern), validate_topic(topic))


def covers(grant: str, pattern: str) -> bool:
    """True when every topic matched by `pattern` is matched by `grant`."""
    g = validate_pattern(grant)
    p = validate_pattern(pattern)
    for i, gt in enumerate(g):
        if gt == ">":
            return len(p) > i  # p has at least one token left (its own '>' counts)
        if i >= len(p):
            return False
        pt = p[i]
        if pt == ">":
            return False  # p matches arbitrarily long tails; g here has a fixed length
        if gt == "*":
            continue
        if pt != gt:  # a literal grant token covers only the same literal
            return False
    return len(g) == len(p)
