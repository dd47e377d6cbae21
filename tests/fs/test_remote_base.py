"""The base of a mounted source is walked after the mount, not before it
(review/remotebase.py): `astrid-fs mount` over a big bucket used to list
every key first (3.8 s for 10,000 keys on s3rver; minutes for a million).
What the session saw before the walk got there is its base, so a change the
project makes meanwhile still shows as a conflict. Real s3rver, real mounts.
"""
# ruff: noqa: F811  (fixtures imported from s3_fixture are parameters here)

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import obstore
import pytest

from astrid_fs.drivers.base import EntryStat
from astrid_fs.drivers.cache import CachingDriver
from astrid_fs.drivers.errors import NotFound
from astrid_fs.drivers.local import LocalDriver
from astrid_fs.overlay.remote import REMOTE_DEV_BASE, DriverTree
from astrid_fs.review import bases, sights
from astrid_fs.review.bases import Base
from astrid_fs.review.remotebase import BaseWalker, complete_point, pending_points, stage_rows
from tests.fs.s3_fixture import (  # noqa: F401
    ACCESS_KEY,
    S3Server,
    S3Target,
    own_s3_server,
    s3,
    s3_mount_table,
    s3_server,
)
from tests.support.mounts import MountedSession, mounted_points

Mount = Callable[..., MountedSession]


def _lookup(root: Path, path: str) -> bases.Found:
    index = bases.open_index(root)
    assert index is not None
    try:
        return index.lookup(path)
    finally:
        index.close()


def _tree(cache: CachingDriver, tmp_path: Path) -> DriverTree:
    """The daemon's tree over `cache` (what the walker observes and lists)."""
    return DriverTree(cache, REMOTE_DEV_BASE, tmp_path / "spool")


def _etag(found: bases.Found) -> str | None:
    assert isinstance(found, Base), found
    return found.etag


def test_the_base_is_what_the_session_saw_first(s3: S3Target, tmp_path: Path) -> None:
    """Sights through the daemon's cache before the walk win over the walk:
    an object seen at v1 then replaced has base v1; one seen then deleted is
    in the base; a name a listing showed absent, or under a directory seen
    absent, is absent even if the project added it; what the session never
    saw has what the walk found."""
    v1 = s3.put("data/x.csv", b"v1\n")
    s3.put("data/gone.csv", b"g\n")
    s3.put("data/keep.csv", b"k\n")
    y = s3.put("other/y.csv", b"y\n")
    root, lower = tmp_path / "session", tmp_path / "project"
    root.mkdir()
    lower.mkdir()
    bases.record(root, lower, pending=["mnt/s3"])
    assert pending_points(root) == ["mnt/s3"]
    assert isinstance(_lookup(root, "mnt/s3/data/x.csv"), bases.Unknown)  # not walked yet
    cache = CachingDriver(s3.driver())
    walker = BaseWalker.attach(root, [(b"mnt/s3", _tree(cache, tmp_path))])
    assert walker is not None

    # the session looks (the daemon's cache fetches) ...
    x = cache.stat("data/x.csv")
    assert x is not None and x.etag == v1
    assert sorted(n for n, _ in cache.list_dir("data")) == ["gone.csv", "keep.csv", "x.csv"]
    assert cache.stat("nope") is None
    # ... then the project changes, before the walk
    v2 = s3.put("data/x.csv", b"v2, by the user\n")
    obstore.delete(s3.store(), "data/gone.csv")
    s3.put("data/new.csv", b"n\n")
    s3.put("nope/z.csv", b"z\n")
    w = s3.put("later/w.csv", b"w\n")

    state = walker.wait(60)
    assert (state.pending, state.error) == ([], None)
    assert state.entries >= 7  # data/ x keep new, other/ y, later/ w, nope/ z
    assert pending_points(root) == []
    assert v2 != v1 and _etag(_lookup(root, "mnt/s3/data/x.csv")) == v1
    assert _lookup(root, "mnt/s3/data/gone.csv") is not None
    assert _lookup(root, "mnt/s3/data/new.csv") is None
    assert _lookup(root, "mnt/s3/nope") is None and _lookup(root, "mnt/s3/nope/z.csv") is None
    assert _etag(_lookup(root, "mnt/s3/later/w.csv")) == w
    assert _etag(_lookup(root, "mnt/s3/other/y.csv")) == y
    # sights after the walk no longer count
    cache.invalidate()
    cache.stat("data/new.csv")
    assert _lookup(root, "mnt/s3/data/new.csv") is None


def test_the_walk_waits_for_a_quiet_source_unless_a_verb_waits_for_it(
        s3: S3Target, tmp_path: Path) -> None:
    """While the session uses the source the walk lists nothing (a LIST
    would compete with the session's reads); a review verb waiting for the
    walk makes it go at once."""
    s3.put("d/a.csv", b"a\n")
    root, lower = tmp_path / "session", tmp_path / "project"
    root.mkdir()
    lower.mkdir()
    bases.record(root, lower, pending=["mnt/s3"])
    busy = _tree(CachingDriver(s3.driver()), tmp_path)
    busy.last_used = time.monotonic() + 3600  # in use for the next hour
    walker = BaseWalker.attach(root, [(b"mnt/s3", busy)])
    assert walker is not None
    since = s3.settle_log()
    walker.start()
    assert walker.paused.wait(10)
    s3.settle_log()
    assert s3.listings_of("", since) == 0 and pending_points(root) == ["mnt/s3"]
    state = walker.wait(60)
    assert (state.pending, state.error) == ([], None)
    assert s3.listings_of("", since) == 1 and _lookup(root, "mnt/s3/d/a.csv") is not None


def test_a_session_that_saw_many_entries_starts_the_walk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The sights are bounded: at MAX_SIGHTS paths the walk is started (its
    merge then drops them), once."""
    monkeypatch.setattr(sights, "MAX_SIGHTS", 4)
    started: list[int] = []
    seen = sights.FirstSeen(on_full=lambda: started.append(1))
    entry = EntryStat("file", 1, 0, 0o100644, 1, "e")
    seen.saw_listing("d", [(f"f{i}", entry) for i in range(3)])
    assert started == []
    seen.saw_stat("other", None)
    seen.saw_listing("e", [("g", entry)])
    assert started == [1]
    seen.clear()
    assert seen.stats == {} and seen.listed == {}


def test_a_directory_removed_during_the_walk_is_skipped(tmp_path: Path) -> None:
    """A directory listed by its parent and gone before its own listing is
    not in the source any more: the walk goes on without it (it used to
    fail the whole walk, so every commit, on a busy source)."""
    src = tmp_path / "source"
    for d in ("gone/deep", "keep"):
        (src / d).mkdir(parents=True)
    (src / "keep" / "k.csv").write_text("k\n")
    (src / "gone" / "deep" / "g.csv").write_text("g\n")
    listed: list[int] = []

    def remove_gone_after_the_root() -> None:
        listed.append(1)
        if len(listed) == 2:
            shutil.rmtree(src / "gone")

    found = sorted(rel for rel, _ in bases.walk_source(LocalDriver(src),
                                                         pace=remove_gone_after_the_root))
    assert found == ["gone", "keep", "keep/k.csv"]
    with pytest.raises(NotFound):
        list(bases.walk_source(LocalDriver(src), "gone"))


def test_a_point_recorded_meanwhile_is_left_as_it_is(tmp_path: Path) -> None:
    """A walk that ends after someone else recorded the point (a review
    verb's own walk, `update`'s re-record) writes nothing."""
    root, lower = tmp_path / "session", tmp_path / "project"
    root.mkdir()
    lower.mkdir()
    bases.record(root, lower, pending=["mnt/s3"])
    first = [("mnt/s3/a", Base("file", size=1, etag="one"))]
    assert complete_point(root, "mnt/s3", first)
    assert not complete_point(root, "mnt/s3", [("mnt/s3/a", Base("file", size=2, etag="two"))])
    assert _etag(_lookup(root, "mnt/s3/a")) == "one"


def test_rows_a_stopped_walk_staged_are_not_the_base(tmp_path: Path) -> None:
    """A walk writes its rows aside as it goes (not all in memory, not under
    the index's lock); a walk stopped halfway (unmount, kill) leaves them
    there, and they never become the base: the next walk replaces them."""
    root, lower = tmp_path / "session", tmp_path / "project"
    root.mkdir()
    lower.mkdir()
    bases.record(root, lower, pending=["mnt/s3"])
    assert stage_rows(root, "mnt/s3", [(f"mnt/s3/old{i}", Base("file", etag="old"))
                                       for i in range(12_000)]) == 12_000
    assert pending_points(root) == ["mnt/s3"]
    assert isinstance(_lookup(root, "mnt/s3/old1"), bases.Unknown)
    assert complete_point(root, "mnt/s3", [("mnt/s3/new", Base("file", etag="new"))])
    assert _lookup(root, "mnt/s3/old1") is None
    assert _etag(_lookup(root, "mnt/s3/new")) == "new"


def test_a_failed_walk_fails_the_commit_and_is_retried(
        own_s3_server: S3Server, tmp_path: Path) -> None:
    """A walk that cannot list the source reports why (the commit that
    asked then fails in one line) and is started again by the next ask."""
    target = S3Target(own_s3_server, tmp_path / "home")
    (tmp_path / "home").mkdir()
    root, lower = tmp_path / "session", tmp_path / "project"
    root.mkdir()
    lower.mkdir()
    bases.record(root, lower, pending=["mnt/s3"])
    cache = CachingDriver(target.driver(retries=0, retry_deadline_s=0.5, timeout_s=2.0))
    walker = BaseWalker.attach(root, [(b"mnt/s3", _tree(cache, tmp_path))])
    assert walker is not None
    try:
        own_s3_server.kill()
        state = walker.wait(60)
        assert state.pending == ["mnt/s3"] and state.error
        assert pending_points(root) == ["mnt/s3"]
        own_s3_server.start()
        target.put("a.csv", b"a\n")
        state = walker.wait(60)
        assert (state.pending, state.error) == ([], None)
        assert _lookup(root, "mnt/s3/a.csv") is not None
    finally:
        target.close()


@pytest.fixture
def s3_env(s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "astrid-base-secret")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    # The daemon walks when a review verb asks (the default, said here as
    # the tests rely on it): the test decides what the session sees first.
    monkeypatch.setenv("ASTRID_FS_BASE_WALK", "on-demand")


def _mount(s3: S3Target, tmp_path: Path, mount_session: Mount) -> MountedSession:
    lower = tmp_path / "project"
    (lower / "mnt").mkdir(parents=True)
    return mount_session(lower, None, "--mounts", str(s3.mount_table(tmp_path)))


def test_mount_does_not_walk_and_a_delete_of_an_object_changed_meanwhile_conflicts(
        s3: S3Target, s3_env: None, tmp_path: Path, mount_session: Mount) -> None:
    """The mount lists no directory of the bucket; the session reads and
    deletes an object the user replaces in between: the diff (whose sync
    makes the daemon walk) shows the delete as a conflict, and commit refuses
    it. With the walk's view as base (the user's version) the delete would
    land over the user's change."""
    v1 = s3.put("data/x.csv", b"v1\n")
    s3.put_many([f"data/many/k{i:03d}" for i in range(50)])
    s = _mount(s3, tmp_path, mount_session)
    s3.settle_log()
    assert s3.listings_of("") == 0 and s3.listings_of("data/") == 0
    assert pending_points(s.root) == ["mnt/s3"]

    x = s.mnt / "mnt" / "s3" / "data" / "x.csv"
    assert x.read_bytes() == b"v1\n"
    s3.put("data/x.csv", b"v2, by the user\n")
    x.unlink()
    diff = s.cli("diff", s.name)
    assert "D! mnt/s3/data/x.csv" in diff.stdout.splitlines()
    assert pending_points(s.root) == []
    assert _etag(_lookup(s.root, "mnt/s3/data/x.csv")) == v1
    assert _lookup(s.root, "mnt/s3/data/many/k049") is not None
    done = s.cli("commit", s.name, check=False)
    assert done.returncode != 0 and "x.csv" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert s3.get("data/x.csv") == b"v2, by the user\n"


def test_what_the_session_saw_outlives_an_unmount_before_the_walk(
        s3: S3Target, s3_env: None, tmp_path: Path, mount_session: Mount) -> None:
    """The usual day: the agent works, the mount goes, the user reviews
    later. The daemon never walked (on demand), so it keeps its sights at
    unmount, and the verb that walks uses them: the agent's delete of an
    object the user replaced after the agent saw it is still a conflict."""
    v1 = s3.put("data/x.csv", b"v1\n")
    s = _mount(s3, tmp_path, mount_session)
    x = s.mnt / "mnt" / "s3" / "data" / "x.csv"
    assert x.read_bytes() == b"v1\n"
    x.unlink()
    s.umount()
    assert pending_points(s.root) == ["mnt/s3"]
    s3.put("data/x.csv", b"v2, by the user\n")
    diff = s.cli("diff", s.name)
    assert "D! mnt/s3/data/x.csv" in diff.stdout.splitlines()
    assert pending_points(s.root) == []
    assert _etag(_lookup(s.root, "mnt/s3/data/x.csv")) == v1
    assert sights.load_sights(s.root, "mnt/s3").stats == {}  # merged, then dropped


def test_a_walk_the_daemon_never_ended_is_done_by_the_next_review_verb(
        s3: S3Target, s3_env: None, tmp_path: Path, mount_session: Mount) -> None:
    """kill -9 of the daemon before its walk: the point stays pending, and
    `diff` on the unmounted session walks it itself."""
    s3.put("data/a.csv", b"a\n")
    s = _mount(s3, tmp_path, mount_session)
    (s.mnt / "mnt" / "s3" / "data" / "b.csv").write_text("b\n")
    pid = s.control("ping")["pid"]
    os.kill(pid, signal.SIGKILL)
    s.cli("umount", str(s.mnt), check=False)
    assert str(s.mnt) not in mounted_points()
    assert pending_points(s.root) == ["mnt/s3"]
    out = s.cli("diff", s.name, "--json").stdout
    assert [c["path"] for c in json.loads(out)] == ["mnt/s3/data/b.csv"]
    assert pending_points(s.root) == []
    assert _lookup(s.root, "mnt/s3/data/a.csv") is not None
    assert _lookup(s.root, "mnt/s3/data/b.csv") is None


def test_a_walk_that_fails_fails_the_verb_in_one_line_and_is_retried(
        own_s3_server: S3Server, s3_env: None, tmp_path: Path, mount_session: Mount) -> None:
    """The source is down when a verb needs the base: the verb fails in one
    line naming the point, nothing is recorded; the next verb, with the
    source back, walks and works."""
    (tmp_path / "home").mkdir(exist_ok=True)
    target = S3Target(own_s3_server, tmp_path / "home")
    try:
        target.put("data/a.csv", b"a\n")
        lower = tmp_path / "project"
        (lower / "mnt").mkdir(parents=True)
        table = s3_mount_table(tmp_path, target.source, own_s3_server.endpoint,
                               "retries = 0\nretry_deadline_s = 1.0\nconnect_timeout_s = 1.0\n")
        s = mount_session(lower, None, "--mounts", str(table))
        (s.mnt / "mnt" / "s3" / "data" / "b.csv").write_text("b\n")
        own_s3_server.kill()
        done = s.cli("diff", s.name, check=False)
        assert done.returncode != 0, done.stdout
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "base of mnt/s3" in done.stderr and "Traceback" not in done.stderr
        assert pending_points(s.root) == ["mnt/s3"]
        own_s3_server.start()
        assert s.cli("diff", s.name).stdout.splitlines() == ["A  mnt/s3/data/b.csv"]
        assert pending_points(s.root) == []
        assert _lookup(s.root, "mnt/s3/data/a.csv") is not None
    finally:
        target.close()



def _walk_listings(s3: S3Target, since: int) -> int:
    """Directory LISTs of the bucket's tree (what a base walk makes) since log
    line `since`."""
    return sum(s3.listings_of(d, since) for d in ("", "data/", "data/many/"))


def test_status_neither_walks_nor_waits_for_a_pending_base(
        s3: S3Target, s3_env: None, tmp_path: Path, mount_session: Mount) -> None:
    """`astrid-fs status` is what a user runs casually: it lists the
    session's changes and says which bases are pending, but lists no
    directory of the bucket (a walk of a big one is minutes of LISTs),
    mounted or not. The next `diff` walks as before."""
    s3.put("data/x.csv", b"v1\n")
    s3.put_many([f"data/many/k{i:03d}" for i in range(50)])
    s = _mount(s3, tmp_path, mount_session)
    (s.mnt / "mnt" / "s3" / "data" / "new.csv").write_text("new\n")
    for mounted in (True, False):
        since = s3.settle_log()
        rows = json.loads(s.cli("status", "--json").stdout)["sessions"]
        row = next(r for r in rows if r["name"] == s.name)
        assert (row["mounted"], row["changes"], row["base_pending"]) == (mounted, 1, ["mnt/s3"])
        text = s.cli("status").stdout
        assert "base of mnt/s3 not taken yet" in text
        s3.settle_log()
        assert _walk_listings(s3, since) == 0
        assert pending_points(s.root) == ["mnt/s3"]
        if mounted:
            s.umount()
    since = s3.settle_log()
    assert "A  mnt/s3/data/new.csv" in s.cli("diff", s.name).stdout.splitlines()
    s3.settle_log()
    assert _walk_listings(s3, since) > 0 and pending_points(s.root) == []
    row = json.loads(s.cli("status", "--json").stdout)["sessions"][0]
    assert row["base_pending"] == []


def test_a_snapshot_does_not_wait_for_the_base(
        s3: S3Target, s3_env: None, tmp_path: Path, mount_session: Mount) -> None:
    """The kernel's recorder snapshots the session after every event that
    changed files: a snapshot takes the upper only, so it neither makes the
    daemon walk the bucket nor waits for it."""
    s3.put_many([f"data/many/k{i:03d}" for i in range(50)])
    s = _mount(s3, tmp_path, mount_session)
    (s.mnt / "mnt" / "s3" / "data" / "new.csv").write_text("new\n")
    since = s3.settle_log()
    s.cli("snapshot", s.name, "--name", "bus-1")
    s3.settle_log()
    assert _walk_listings(s3, since) == 0
    assert pending_points(s.root) == ["mnt/s3"]
    assert "bus-1" in s.cli("log", s.name).stdout
