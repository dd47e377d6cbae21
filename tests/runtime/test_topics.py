"""The NATS-style matcher and the grant rule `covers`, by example and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astrid_runtime.bus.topics import covers, matches, validate_pattern, validate_topic
from astrid_runtime.errors import BusError

LITERALS = st.sampled_from(["a", "b", "c", "agent", "user"])
topics = st.lists(LITERALS, min_size=1, max_size=5).map(".".join)
pattern_tokens = st.lists(st.one_of(LITERALS, st.just("*")), min_size=1, max_size=5)
patterns = st.one_of(
    pattern_tokens.map(".".join),
    pattern_tokens.map(lambda t: ".".join([*t, ">"])),
    st.just(">"),
)


def reference_match(pattern: str, topic: str) -> bool:
    """A second, recursive statement of the NATS rules."""
    p, t = pattern.split("."), topic.split(".")

    def go(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(t)
        if p[i] == ">":
            return j < len(t)
        if j == len(t):
            return False
        return (p[i] == "*" or p[i] == t[j]) and go(i + 1, j + 1)

    return go(0, 0)


@pytest.mark.parametrize(("pattern", "topic", "expected"), [
    ("a.b", "a.b", True), ("a.b", "a.c", False), ("a.*", "a.b", True),
    ("a.*", "a.b.c", False), ("a.>", "a.b.c", True), ("a.>", "a", False),
    (">", "a", True), ("*.b.>", "x.b.y", True), ("*", "a.b", False),
])
def test_examples(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


@pytest.mark.parametrize("bad", ["", "a..b", ".a", "a.", "a b", "a.>.b", "a*", "x>", "a.b\n"])
def test_bad_patterns_are_invalid(bad: str) -> None:
    with pytest.raises(BusError) as e:
        validate_pattern(bad)
    assert e.value.kind == "invalid"


@pytest.mark.parametrize("bad", ["a.*", "a.>", "", "a..b", "x" * 300])
def test_bad_topics_are_invalid(bad: str) -> None:
    with pytest.raises(BusError):
        validate_topic(bad)


@given(patterns, topics)
def test_matcher_agrees_with_reference(pattern: str, topic: str) -> None:
    assert matches(pattern, topic) == reference_match(pattern, topic)


@given(topics)
def test_a_topic_matches_itself_and_the_full_wildcard(topic: str) -> None:
    assert matches(topic, topic) and matches(">", topic)


@given(patterns, patterns, topics)
def test_covers_is_sound(grant: str, pattern: str, topic: str) -> None:
    # If the grant covers the pattern, nothing the pattern matches escapes the grant.
    if covers(grant, pattern) and matches(pattern, topic):
        assert matches(grant, topic)


@given(patterns)
def test_covers_is_reflexive_and_full_wildcard_covers_all(pattern: str) -> None:
    assert covers(pattern, pattern) and covers(">", pattern)


@given(patterns, patterns, patterns)
def test_covers_is_transitive(a: str, b: str, c: str) -> None:
    if covers(a, b) and covers(b, c):
        assert covers(a, c)


@pytest.mark.parametrize(("grant", "pattern", "expected"), [
    ("notes.>", "notes.*", True), ("notes.>", ">", False), ("notes.*", "notes.>", False),
    ("*.b", "a.b", True), ("a.b", "*.b", False), ("a.>", "a.b.>", True),
])
def test_covers_examples(grant: str, pattern: str, expected: bool) -> None:
    assert covers(grant, pattern) is expected
