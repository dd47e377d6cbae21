"""Regression (found by the commit model test): a lower file renamed onto
another existing name, then only the old name's deletion committed. The
deletion must take the renamed content with it; otherwise the rest of the
session is left based on a lower entry the session itself deleted."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.support.mounts import MountedSession, tree_state

Mount = Callable[..., MountedSession]


def test_partial_commit_of_a_rename_source_keeps_the_session_committable(
        tmp_path: Path, mount_session: Mount) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "a").write_text("a")
    (lower / "b").symlink_to("a")
    s = mount_session(lower)
    os.rename(s.mnt / "a", s.mnt / "b")
    view = tree_state(s.mnt)
    s.cli("commit", s.name, "a")
    assert tree_state(s.mnt) == view
    s.cli("commit", s.name)
    assert tree_state(s.mnt) == view
    assert tree_state(lower) == view
