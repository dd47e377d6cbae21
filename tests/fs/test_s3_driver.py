"""The s3 driver against a real s3rver on 127.0.0.1 (tests/fs/s3_fixture.py)."""
# ruff: noqa: F811  (fixtures imported from s3_fixture are parameters here)

from __future__ import annotations

import concurrent.futures as cf
import errno
import logging
import os
import random
import threading
from pathlib import Path

import pytest

from astrid_fs.drivers.cache import CacheConfig, CachingDriver
from astrid_fs.drivers.errors import (
    ConfigError,
    DriverError,
    IsADirectory,
    NotADirectory,
    NotFound,
    PermissionDenied,
    ReadOnly,
    Unreachable,
)
from astrid_fs.drivers.readahead import MIB
from astrid_fs.drivers.registry import Registry
from astrid_fs.mounttable import MountTable, open_entry
from tests.fs.s3_fixture import (  # noqa: F401
    ACCESS_KEY,
    BUCKET,
    S3Server,
    S3Target,
    free_port,
    own_s3_server,
    s3,
    s3_env,
    s3_server,
)


def _blob(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _write(tmp_path: Path, name: str, body: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(body)
    return path


# ---- check(): fail fast, one line ---------------------------------------------------------

def test_check_passes_on_a_live_bucket(s3: S3Target) -> None:
    s3.driver().check()


def test_missing_bucket_fails_check_with_one_line(s3: S3Target) -> None:
    drv = s3.driver("s3://no-such-bucket/x")
    with pytest.raises(NotFound) as info:
        drv.check()
    msg = str(info.value)
    assert "\n" not in msg and "bucket does not exist" in msg
    assert info.value.errno == errno.ENOENT


def test_unreachable_endpoint_fails_check_with_one_line(s3: S3Target) -> None:
    drv = s3.driver(endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Unreachable) as info:
        drv.check()
    msg = str(info.value)
    assert "\n" not in msg and "connection refused" in msg and "127.0.0.1" in msg
    assert info.value.errno == errno.EIO


def test_forbidden_is_eacces_and_names_no_secret(s3: S3Target) -> None:
    env = {"HOME": str(s3.home), "AWS_ACCESS_KEY_ID": "not-a-known-key",
           "AWS_SECRET_ACCESS_KEY": "sekrit-4242"}
    drv = s3.driver(env=env)
    with pytest.raises(PermissionDenied) as info:
        drv.check()
    assert info.value.errno == errno.EACCES
    assert "403" in str(info.value) and "sekrit-4242" not in str(info.value)
    with pytest.raises(PermissionDenied):
        drv.list_dir("")


# ---- listing and stat --------------------------------------------------------------------

def test_prefixes_list_as_directories_objects_as_files(s3: S3Target) -> None:
    etag = s3.put("top.txt", b"hello")
    s3.put("a/b.txt", b"12345678")
    s3.put("a/c/d.txt", b"")
    drv = s3.driver()
    root = dict(drv.list_dir(""))
    assert sorted(root) == ["a", "top.txt"]
    assert root["a"].kind == "dir" and root["a"].mode & 0o170000 == 0o040000
    top = root["top.txt"]
    assert (top.kind, top.size, top.etag) == ("file", 5, etag)
    assert top.mtime_ns > 0 and 1 < top.ino < 2**48
    assert [n for n, _ in drv.list_dir("a")] == ["b.txt", "c"]
    assert drv.stat("a/b.txt") == dict(drv.list_dir("a"))["b.txt"]
    assert drv.stat("a/c").kind == "dir"  # type: ignore[union-attr]
    assert drv.stat("a/nope") is None
    assert drv.stat("").kind == "dir"  # type: ignore[union-attr]
    with pytest.raises(NotADirectory):
        drv.list_dir("top.txt")
    with pytest.raises(NotFound):
        drv.list_dir("nothing-here")
    with pytest.raises(IsADirectory):
        drv.open_reader("a")


def test_listing_paginates_past_1000_keys(s3: S3Target) -> None:
    keys = [f"many/k{i:05d}" for i in range(1500)]
    s3.put_many(keys)
    s3.put_many([f"many/sub{i}/x" for i in range(3)])
    entries = s3.driver().list_dir("many")
    names = [n for n, _ in entries]
    assert len(names) == 1503
    assert names[:2] == ["k00000", "k00001"] and names[-1] == "sub2"
    assert all(st.size == 1 for n, st in entries if n.startswith("k"))


def test_odd_names_round_trip(s3: S3Target, tmp_path: Path) -> None:
    drv = s3.driver()
    name = "dir with space/ünïcode + 100%.txt"
    drv.put_file(name, _write(tmp_path, "f", b"odd"), 0o644, 0)
    assert [n for n, _ in drv.list_dir("dir with space")] == ["ünïcode + 100%.txt"]
    reader = drv.open_reader(name)
    assert reader.pread(10, 0) == b"odd"
    reader.close()


# ---- reads ------------------------------------------------------------------------------------

def test_fingerprint_is_the_etag_and_changes_with_the_object(s3: S3Target) -> None:
    first = s3.put("f.txt", b"one")
    drv = s3.driver()
    assert drv.fingerprint("f.txt") == first == drv.stat("f.txt").etag  # type: ignore[union-attr]
    second = s3.put("f.txt", b"two")
    assert second != first and drv.fingerprint("f.txt") == second
    assert drv.fingerprint("missing.txt") is None


# ---- write-back ------------------------------------------------------------------------------

def test_put_small_and_multipart(s3: S3Target, tmp_path: Path) -> None:
    drv = s3.driver(multipart_threshold_mib=5, part_size_mib=5)
    small = drv.put_file("w/small.txt", _write(tmp_path, "s", b"small"), 0o644, 0)
    assert s3.get("w/small.txt") == b"small" and small == drv.fingerprint("w/small.txt")
    body = _blob(12 * MIB, seed=7)
    parts_before = s3.server.count(r"Stored part \d+ of")
    etag = drv.put_file("w/big.bin", _write(tmp_path, "b", body), 0o644, 0)
    assert s3.get("w/big.bin") == body and etag == drv.fingerprint("w/big.bin")
    assert s3.server.count(r"Stored part \d+ of") - parts_before == 3  # 5 + 5 + 2 MiB


def test_delete_rename_and_delete_tree(s3: S3Target, tmp_path: Path) -> None:
    s3.put_many(["d/a.txt", "d/sub/b.txt", "d/sub/c.txt", "e.txt"])
    drv = s3.driver()
    drv.rename("e.txt", "moved/e.txt")
    assert s3.keys() == ["d/a.txt", "d/sub/b.txt", "d/sub/c.txt", "moved/e.txt"]
    drv.rename("d/sub", "d/renamed")
    assert s3.keys() == ["d/a.txt", "d/renamed/b.txt", "d/renamed/c.txt", "moved/e.txt"]
    drv.delete("moved/e.txt")
    drv.delete("moved/e.txt")  # absent: no error
    assert drv.stat("moved") is None
    drv.make_dir("empty", 0o755)  # S3 has no empty directories: a no-op
    assert drv.stat("empty") is None and not drv.capabilities.empty_dirs
    drv.delete_tree("d")
    assert s3.keys() == []
    with pytest.raises(NotFound):
        drv.rename("nothing", "else")
    # symlinks are stored as rclone --links stores them (issue 10 item 7)
    drv.make_symlink("l", "target")
    assert s3.keys() == ["l.rclonelink"] and s3.get("l.rclonelink") == b"target"
    st = drv.stat("l")
    assert st is not None and st.kind == "symlink" and drv.readlink("l") == "target"
    assert [(n, e.kind) for n, e in drv.list_dir("")] == [("l", "symlink")]
    drv.delete("l")
    assert s3.keys() == []


def test_delete_tree_past_one_bulk_request(s3: S3Target) -> None:
    s3.put_many([f"bulk/k{i:04d}" for i in range(1100)])
    s3.driver().delete_tree("bulk")
    assert s3.keys() == []


# ---- failures mid-read: an error within the timeout, never a hang -------------------------

def test_server_killed_mid_read_is_eio(own_s3_server: S3Server, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    target = S3Target(own_s3_server, tmp_path)
    body = _blob(24 * MIB, seed=8)
    target.put("k.bin", body)
    drv = target.driver(retries=1, retry_deadline_s=1.0, timeout_s=5.0)
    reader = drv.open_reader("k.bin")
    assert reader.pread(4096, 0) == body[:4096]
    own_s3_server.kill()
    with caplog.at_level(logging.WARNING, "astrid_fs.drivers"), \
            pytest.raises(DriverError) as info:
        reader.pread(4096, 20 * MIB)
    assert info.value.errno == errno.EIO
    assert any("k.bin" in r.getMessage() for r in caplog.records)
    reader.close()
    target.close()


def test_stalled_server_times_out_instead_of_hanging(own_s3_server: S3Server,
                                                     tmp_path: Path) -> None:
    target = S3Target(own_s3_server, tmp_path)
    target.put("s.bin", _blob(MIB, seed=9))
    drv = target.driver(retries=0, timeout_s=1.0, connect_timeout_s=1.0)
    reader = drv.open_reader("s.bin")
    own_s3_server.pause()
    try:
        with pytest.raises(DriverError) as info:
            reader.pread(4096, 512 * 1024)
        assert info.value.errno == errno.EIO and "timed out" in str(info.value)
        with pytest.raises(DriverError):
            drv.check()
    finally:
        own_s3_server.resume()
    reader.close()
    target.close()


# ---- credentials: the AWS chain, never recorded -------------------------------------------

def test_profile_from_aws_files(s3: S3Target) -> None:
    aws = s3.home / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        f"[astrid]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = from-file\n")
    (aws / "config").write_text(
        f"[profile astrid]\nregion = eu-west-1\nendpoint_url = {s3.server.endpoint}\n")
    env = {"HOME": str(s3.home)}
    drv = s3.driver(env=env, endpoint=None, region=None, profile="astrid")
    assert drv.settings.region == "eu-west-1"
    assert drv.settings.endpoint == s3.server.endpoint
    assert drv.settings.credential_source.startswith("profile astrid")
    drv.check()
    with pytest.raises(ConfigError, match="profile 'nobody' not found"):
        s3.driver(env=env, profile="nobody")


def test_secrets_stay_out_of_tables_logs_and_errors(
        s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    secret = "astrid-SECRET-do-not-print-31337"
    monkeypatch.setenv("HOME", str(s3.home))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", secret + "-token")
    text = (f'[[mount]]\npath = "/mnt/s3"\nsource = "{s3.source}"\n'
            f'endpoint = "{s3.server.endpoint}"\nregion = "us-east-1"\ncache_mib = 8\n')
    table = MountTable.from_toml(text)
    session_copy = tmp_path / "session" / "mounts.toml"
    session_copy.parent.mkdir()
    table.write(session_copy)
    s3.put("x.txt", b"x")
    with caplog.at_level(logging.DEBUG):
        drv = open_entry(table.entries[0])
        drv.check()
        drv.list_dir("")
        reader = drv.open_reader("x.txt")
        reader.pread(1, 0)
        reader.close()
        with pytest.raises(NotFound) as missing:
            drv.list_dir("nope")
        drv.close()
    recorded = [session_copy.read_text(), table.to_toml(), repr(drv), repr(table),
                str(missing.value), caplog.text]
    assert not [r for r in recorded if secret in r]
    assert MountTable.load(session_copy) == table


# ---- wrappers over s3: cache consistency, read-only -----------------------------------------

class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_parallel_listings_of_one_directory_are_one_list(s3: S3Target) -> None:
    """Parallel lookups in a directory not yet listed (a mount's
    DriverTree.warm_lookup, from the second lookup on) each ask for its
    listing: they share one LIST, counted at the server."""
    s3.put_many([f"par/k{i:03d}" for i in range(300)])
    drv = CachingDriver(s3.driver(), CacheConfig(metadata_ttl_s=30))
    before = s3.settle_log()
    start = threading.Barrier(8)

    def list_it() -> list[str]:
        start.wait()
        return [name for name, _ in drv.list_dir("par")]

    with cf.ThreadPoolExecutor(8) as pool:
        results = [f.result() for f in [pool.submit(list_it) for _ in range(8)]]
    assert all(r == results[0] for r in results) and len(results[0]) == 300
    s3.settle_log()
    assert s3.listings_of("par/", before) == 1


def test_cache_answers_stats_from_listings_and_is_fresh_after_commit(
        s3: S3Target, tmp_path: Path) -> None:
    s3.put_many([f"c/f{i}" for i in range(20)])
    clock = _Clock()
    drv = CachingDriver(s3.driver(), CacheConfig(metadata_ttl_s=30), clock=clock)
    names = [n for n, _ in drv.list_dir("c")]
    misses = drv.counters.meta_misses
    for n in names:
        assert drv.stat(f"c/{n}") is not None
    assert drv.stat("c/absent") is None
    assert drv.counters.meta_misses == misses  # one LIST answered 21 stats

    s3.put("c/f0", b"changed behind our back")
    assert drv.stat("c/f0").size == 1  # type: ignore[union-attr]  # within the TTL
    clock.now += 31
    assert drv.stat("c/f0").size == len(b"changed behind our back")  # type: ignore[union-attr]

    drv.put_file("c/new", _write(tmp_path, "n", b"new"), 0o644, 0)  # commit through the cache
    assert "new" in [n for n, _ in drv.list_dir("c")]
    drv.delete("c/new")
    assert drv.stat("c/new") is None
    drv.put_file("deep/er/file", _write(tmp_path, "d", b"d"), 0o644, 0)
    assert drv.stat("deep") is not None and drv.stat("deep/er/file") is not None


def test_read_only_entry_refuses_write_back(s3: S3Target, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_env(s3.home).items():
        monkeypatch.setenv(key, value)
    text = (f'[[mount]]\npath = "/data"\nsource = "{s3.source}"\nread_only = true\n'
            f'endpoint = "{s3.server.endpoint}"\n')
    drv = open_entry(MountTable.from_toml(text, registry=Registry()).entries[0])
    with pytest.raises(ReadOnly) as info:
        drv.put_file("x", _write(tmp_path, "x", b"x"), 0o644, 0)
    assert info.value.errno == errno.EROFS
    drv.check()
    drv.close()
    assert os.environ["AWS_ACCESS_KEY_ID"] == ACCESS_KEY
