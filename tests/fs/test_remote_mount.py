"""S3 under /mnt/s3 of a session: `astrid-fs mount --mounts FILE` against a
real s3rver and a real FUSE mount; plus DriverTree (the overlay seam) alone."""
# ruff: noqa: F811  (fixtures imported from s3_fixture are parameters here)

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.drivers.cache import CachingDriver
from astrid_fs.errors import SessionError
from astrid_fs.overlay.remote import REMOTE_DEV_BASE, DriverTree, prepare_session_mounts
from astrid_fs.overlay.whiteout import OverlayXattrs
from astrid_fs.review.lowers import SessionLowers
from tests.fs.s3_fixture import (  # noqa: F401
    ACCESS_KEY,
    S3Server,
    S3Target,
    free_port,
    own_s3_server,
    s3,
    s3_mount_table,
    s3_server,
)
from tests.support.mounts import MountedSession, run_cli

SECRET = "astrid-SECRET-mount-test-777"


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials in the environment only (the daemon inherits them)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))


def test_driver_tree_warms_then_answers_from_cache(s3: S3Target, tmp_path: Path) -> None:
    s3.put("d/x.txt", b"hello")
    etag = s3.put("d/y.bin", b"y" * 1000)
    tree = DriverTree(CachingDriver(s3.driver()), REMOTE_DEV_BASE, tmp_path / "spool")
    assert not tree.is_warm(b"d")
    tree.warm(b"d")
    assert tree.is_warm(b"d") and tree.is_warm(b"d/x.txt")  # the listing answers its children
    assert tree.names(b"d") == [b"x.txt", b"y.bin"]
    st = tree.stat(b"d/y.bin")
    assert st is not None and st.st_size == 1000 and st.st_dev == REMOTE_DEV_BASE
    assert tree.stat(b"d/none") is None
    assert not tree.is_warm(b"d/y.bin", data=True)
    tree.warm(b"d/y.bin", data=True)
    assert tree.is_warm(b"d/y.bin", data=True)
    assert tree.fingerprint(b"d/y.bin") == etag
    fd = os.open(tmp_path / "copy", os.O_WRONLY | os.O_CREAT, 0o600)
    tree.fetch_to(b"d/y.bin", fd)
    os.close(fd)
    assert (tmp_path / "copy").read_bytes() == b"y" * 1000
    assert list((tmp_path / "spool").iterdir()) == []  # the spool copy is consumed
    reader = tree.open_reader(b"d/x.txt")
    assert reader.pread(100, 0) == b"hello"
    reader.close()
    with pytest.raises(OSError) as info:
        tree.readlink(b"d/x.txt")
    assert info.value.errno == errno.EINVAL
    tree.close()


def test_s3_under_mnt_through_a_real_mount(
        s3: S3Target, tmp_path: Path, aws_env: None,
        mount_session: Callable[..., MountedSession]) -> None:
    big = random.Random(7).randbytes(12 * 1024 * 1024)
    base_etag = s3.put("data/file.csv", b"a,b\n1,2\n")
    s3.put("data/big.bin", big)
    s3.put_many([f"many/k{i:04d}" for i in range(1100)])
    lower = tmp_path / "project"
    lower.mkdir()
    (lower / "README").write_text("project\n")
    table = s3_mount_table(tmp_path, s3.source, s3.server.endpoint)

    session = mount_session(lower, None, "--mounts", str(table))
    mnt = session.mnt
    assert sorted(os.listdir(mnt)) == ["README", "mnt"]
    assert os.listdir(mnt / "mnt") == ["s3"]
    assert sorted(os.listdir(mnt / "mnt" / "s3")) == ["data", "many"]
    assert len(os.listdir(mnt / "mnt" / "s3" / "many")) == 1100
    csv = mnt / "mnt" / "s3" / "data" / "file.csv"
    assert csv.stat().st_size == 8 and csv.read_bytes() == b"a,b\n1,2\n"
    got = hashlib.sha256((mnt / "mnt" / "s3" / "data" / "big.bin").read_bytes()).digest()
    assert got == hashlib.sha256(big).digest()
    session.umount()

    # Writes go to the upper layer, never to the bucket; copy-up records the ETag.
    # The project has no mnt/: the directory above the mount point is copied
    # up from the mount table alone.
    assert not (lower / "mnt").exists()
    session = mount_session(lower, None, "--mounts", str(table))
    mnt = session.mnt
    csv = mnt / "mnt" / "s3" / "data" / "file.csv"
    with open(csv, "a") as f:
        f.write("3,4\n")
    (mnt / "mnt" / "s3" / "data" / "new.txt").write_text("new\n")
    assert csv.read_bytes() == b"a,b\n1,2\n3,4\n"
    upper_csv = session.upper / "mnt" / "s3" / "data" / "file.csv"
    assert upper_csv.read_bytes() == b"a,b\n1,2\n3,4\n"
    assert (session.upper / "mnt" / "s3" / "data" / "new.txt").exists()
    assert s3.get("data/file.csv") == b"a,b\n1,2\n" and "data/new.txt" not in set(s3.keys())
    ns = json.loads((session.root / "session.toml").read_text().split("xattr_ns = ")[1]
                    .splitlines()[0])
    origin = json.loads(os.getxattr(upper_csv, OverlayXattrs(ns).origin))
    assert origin["blake3"] == base_etag  # the seam keeps the remote fingerprint there

    # The session records its table, without credentials; diff sees the change.
    recorded = (session.root / "mounts.toml").read_text()
    assert s3.source in recorded and SECRET not in recorded
    status = json.loads(session.cli("status", "--json").stdout)["sessions"]
    (row,) = [r for r in status if r["name"] == session.name]
    assert {"path": "/mnt/s3", "source": s3.source} in [
        {"path": m["path"], "source": m["source"]} for m in row["mounts"]]
    text = session.cli("status").stdout
    assert f"/mnt/s3 <- {s3.source}" in text and SECRET not in text
    diff = session.cli("diff", "--stat", session.name, check=False)
    assert "mnt/s3/data/file.csv" in diff.stdout + diff.stderr
    logs = (session.root / "run" / "daemon.log")
    assert not logs.exists() or SECRET not in logs.read_text()
    session.umount()


def test_unreachable_source_fails_the_mount_with_one_line(
        s3: S3Target, tmp_path: Path, aws_env: None, astrid_home: Path) -> None:
    lower = tmp_path / "project"
    lower.mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    table = s3_mount_table(tmp_path, s3.source, f"http://127.0.0.1:{free_port()}", "retries = 0\n")
    result = run_cli("mount", "--lower", str(lower), "--session", "x", "--mounts", str(table),
                     str(mnt), home=astrid_home, check=False)
    assert result.returncode != 0
    line = result.stderr.strip()
    assert "\n" not in line and "connection refused" in line and "/mnt/s3" in line
    assert not (astrid_home / "sessions" / "x").exists()  # nothing half-made
    missing = s3_mount_table(tmp_path, "s3://no-such-bucket", s3.server.endpoint)
    result = run_cli("mount", "--lower", str(lower), "--session", "y", "--mounts",
                     str(missing), str(mnt), home=astrid_home, check=False)
    assert result.returncode != 0 and "bucket does not exist" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[[mount]]\npath = "mnt/s3"\nsource = "s3://b"\n')
    result = run_cli("mount", "--lower", str(lower), "--session", "z", "--mounts",
                     str(bad), str(mnt), home=astrid_home, check=False)
    assert result.returncode == 2 and f"{bad}:2:" in result.stderr


def test_session_lowers_resolve_virtual_paths_to_drivers(
        s3: S3Target, tmp_path: Path, aws_env: None) -> None:
    etag = s3.put("d/x.csv", b"x")
    lower = tmp_path / "project"
    (lower / "src").mkdir(parents=True)
    session_root = tmp_path / "session"
    session_root.mkdir()
    table = s3_mount_table(tmp_path, s3.source, s3.server.endpoint)
    recorded = prepare_session_mounts(str(table), session_root, lower)
    assert recorded == str(session_root / "mounts.toml")
    lowers = SessionLowers.open(session_root, lower)
    try:
        lowers.check()
        hit = lowers.resolve("mnt/s3/d/x.csv")
        assert hit.rel == "d/x.csv" and hit.remote_path == f"{s3.source}/d/x.csv"
        assert lowers.is_remote("mnt/s3/d/x.csv") and not lowers.is_remote("src/a.py")
        assert lowers.fingerprint("mnt/s3/d/x.csv") == etag
        assert lowers.stat("mnt/s3/d").kind == "dir"  # type: ignore[union-attr]
        assert lowers.resolve("src").driver.local_root == lower
        body = tmp_path / "body"
        body.write_bytes(b"committed")
        hit.driver.put_file(hit.rel, body, 0o644, 0)  # what commit will do
        assert s3.get("d/x.csv") == b"committed"
        assert lowers.fingerprint("mnt/s3/d/x.csv") != etag
    finally:
        lowers.close()
    # A reopened session reuses its table; another table is refused.
    assert prepare_session_mounts(None, session_root, lower) == recorded
    other = tmp_path / "other.toml"
    other.write_text(table.read_text().replace("/mnt/s3", "/data"))
    with pytest.raises(SessionError, match="another mount table"):
        prepare_session_mounts(str(other), session_root, lower)


def test_server_killed_mid_read_is_eio_through_the_mount(
        own_s3_server: S3Server, tmp_path: Path, aws_env: None,
        mount_session: Callable[..., MountedSession]) -> None:
    target = S3Target(own_s3_server, tmp_path)
    body = random.Random(9).randbytes(24 * 1024 * 1024)
    target.put("big.bin", body)
    lower = tmp_path / "project"
    lower.mkdir()
    table = s3_mount_table(tmp_path, target.source, own_s3_server.endpoint,
                   "retries = 0\ntimeout_s = 5\n")
    session = mount_session(lower, None, "--mounts", str(table))
    with open(session.mnt / "mnt" / "s3" / "big.bin", "rb", buffering=0) as f:
        assert f.read(4096) == body[:4096]
        own_s3_server.kill()
        f.seek(20 * 1024 * 1024)
        with pytest.raises(OSError) as info:
            f.read(4096)
    assert info.value.errno == errno.EIO
    log = (session.root / "run" / "daemon.log").read_text()
    assert "big.bin" in log and "connection refused" in log
    session.umount()
    target.close()
