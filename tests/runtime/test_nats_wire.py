"""The bridge's wire rules for topics, patterns and the origin header, alone (no server).
The signature and replay rules are in test_bridge_trust.py."""

from __future__ import annotations

import pytest

from astrid_runtime.bus.nats.wire import (
    is_instance_id,
    is_pattern,
    is_topic,
    new_session,
    origin_header,
    origin_plugin,
)


@pytest.mark.parametrize("topic, ok", [
    ("notes.add", True), ("a", True), ("a.b-c_d.e1", True),
    ("", False), ("a..b", False), ("a.", False), (".a", False), ("a.*", False),
    ("a.>", False), ("a b", False), ("a\tb", False), ("a\r\n", False),
])
def test_topics(topic: str, ok: bool) -> None:
    assert is_topic(topic) is ok


@pytest.mark.parametrize("pattern, ok", [
    (">", True), ("*", True), ("a.*", True), ("a.>", True), ("*.b.>", True), ("a.b", True),
    ("a.>.b", False), ("a>", False), ("a*", False), ("", False), ("a..*", False),
    ("> ", False),
])
def test_patterns(pattern: str, ok: bool) -> None:
    assert is_pattern(pattern) is ok


def test_origin_header_names_the_instance_and_the_publisher() -> None:
    header = origin_header("laptop-1", "router")
    assert header == "laptop-1/router"
    assert origin_plugin(header) == "router"
    assert origin_plugin(None) == ""
    assert origin_plugin("no-slash") == ""
    assert is_instance_id("laptop-1.a_b") and not is_instance_id("a/b")
    assert not is_instance_id("a b") and not is_instance_id("")


def test_sessions_are_fresh_hex() -> None:
    a, b = new_session(), new_session()
    assert a != b and len(a) == 16 and int(a, 16) >= 0
