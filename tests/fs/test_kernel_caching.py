"""The kernel caches what the session alone changes: a warm listing or
re-read does not reach the daemon (counted by the daemon's own request
counters), and changes made through the mount are never served stale."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mounts import MountedSession

Mount = Callable[..., MountedSession]


def stats(s: MountedSession) -> dict[str, int]:
    reply = s.control("stats")
    assert reply["cache_dirs"], "the FUSE reply shim is not loaded (scripts/setup.sh builds it)"
    counts: dict[str, int] = reply["requests"]
    return counts


def test_warm_listing_is_served_by_the_kernel(tmp_path: Path, mount_session: Mount) -> None:
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(50):
        (lower / "d" / f"f{i}").write_text(str(i))
    s = mount_session(lower)
    first = sorted(p.name for p in (s.mnt / "d").iterdir())
    before = stats(s).get("readdir", 0)
    for _ in range(5):
        assert sorted(p.name for p in (s.mnt / "d").iterdir()) == first
    assert stats(s).get("readdir", 0) == before


def test_listing_cache_follows_changes_through_the_mount(mount_session: Mount) -> None:
    s = mount_session()
    (s.mnt / "d").mkdir()
    (s.mnt / "d" / "a").write_text("a")
    assert sorted(p.name for p in (s.mnt / "d").iterdir()) == ["a"]
    (s.mnt / "d" / "b").write_text("b")
    assert sorted(p.name for p in (s.mnt / "d").iterdir()) == ["a", "b"]
    (s.mnt / "d" / "a").unlink()
    assert sorted(p.name for p in (s.mnt / "d").iterdir()) == ["b"]
    (s.mnt / "d" / "b").rename(s.mnt / "c")
    assert list((s.mnt / "d").iterdir()) == []


def test_rewrites_are_not_served_from_a_stale_page_cache(mount_session: Mount) -> None:
    s = mount_session()
    f = s.mnt / "f"
    for i in range(20):
        f.write_text(f"version {i}")
        assert f.read_text() == f"version {i}"


def test_lower_changes_show_once_their_ttl_expires(tmp_path: Path, mount_session: Mount) -> None:
    # With --lower-ttl 0 the kernel revalidates lower-backed attributes on
    # every use, so a cached listing is dropped as soon as the project
    # directory's mtime moves: edits to the project show in the session.
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "a").write_text("a")
    s = mount_session(lower, None, "--lower-ttl", "0")
    assert sorted(p.name for p in (s.mnt / "d").iterdir()) == ["a"]
    (lower / "d" / "b").write_text("b")
    assert sorted(p.name for p in (s.mnt / "d").iterdir()) == ["a", "b"]
    assert (s.mnt / "d" / "b").read_text() == "b"


def test_security_xattr_probes_never_reach_python(tmp_path: Path, mount_session: Mount) -> None:
    # `ls -l` asks for security.selinux on every entry and every write(2)
    # asks for security.capability: the shim answers those in C.
    lower = tmp_path / "lower"
    lower.mkdir()
    for i in range(20):
        (lower / f"f{i}").write_text("x")
    s = mount_session(lower)
    subprocess.run(["ls", "-l", str(s.mnt)], check=True, capture_output=True)
    with open(s.mnt / "w", "wb") as f:
        for _ in range(20):
            f.write(b"y" * 4096)
            f.flush()
    assert stats(s).get("getxattr", 0) == 0
    os.setxattr(s.mnt / "f1", "user.k", b"v")
    assert os.getxattr(s.mnt / "f1", "user.k") == b"v"
    assert stats(s).get("getxattr", 0) == 1
    with pytest.raises(OSError):
        os.getxattr(s.mnt / "f1", "security.capability")


def test_project_edits_show_in_directories_the_session_changed_too(
        tmp_path: Path, mount_session: Mount) -> None:
    # A merged directory's cached listing is checked against the upper
    # directory's mtime; the daemon notices the project side moving (at the
    # lower TTL, 0 here) and drops the kernel's cache of that directory.
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "a").write_text("a")
    s = mount_session(lower, None, "--lower-ttl", "0")
    (s.mnt / "d" / "mine").write_text("mine")
    assert sorted(p.name for p in (s.mnt / "d").iterdir()) == ["a", "mine"]
    (lower / "d" / "b").write_text("b")
    # The invalidation lands just after the reply that noticed the change:
    # look again until it has (bounded; no sleeping).
    for _ in range(2000):
        names = sorted(p.name for p in (s.mnt / "d").iterdir())
        if names == ["a", "b", "mine"]:
            break
        os.stat(s.mnt / "d")
        os.sched_yield()
    assert names == ["a", "b", "mine"]
    assert (s.mnt / "d" / "b").read_text() == "b"
