"""Real tools doing real work inside a mount: git, venv + pip, SQLite in WAL
mode, tar, an editor-style save, rm -rf of a deep tree."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from tests.support.mounts import MountedSession, hash_tree, tree_state

Mount = Callable[..., MountedSession]
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}


def sh(*cmd: str, cwd: Path) -> str:
    return subprocess.run(cmd, cwd=cwd, env=GIT_ENV, check=True, capture_output=True,
                          text=True, timeout=300).stdout


def test_git_workflow(tmp_path: Path, mount_session: Mount) -> None:
    lower = tmp_path / "proj"
    lower.mkdir()
    (lower / "app.py").write_text("print(1)\n")
    sh("git", "init", "-q", "-b", "main", cwd=lower)
    sh("git", "add", ".", cwd=lower)
    sh("git", "commit", "-qm", "init", cwd=lower)
    before = hash_tree(lower)
    s = mount_session(lower)
    m = s.mnt
    assert sh("git", "status", "--porcelain", cwd=m) == ""
    (m / "app.py").write_text("print(2)\n")
    (m / "new.py").write_text("x = 1\n")
    assert sorted(sh("git", "status", "--porcelain", cwd=m).splitlines()) == [
        " M app.py", "?? new.py"]
    sh("git", "add", "-A", cwd=m)
    sh("git", "commit", "-qm", "change", cwd=m)
    sh("git", "checkout", "-q", "-b", "other", "HEAD~1", cwd=m)
    assert (m / "app.py").read_text() == "print(1)\n"
    assert not (m / "new.py").exists()
    sh("git", "checkout", "-q", "main", cwd=m)
    assert (m / "new.py").read_text() == "x = 1\n"
    assert sh("git", "fsck", "--no-progress", cwd=m) == ""
    s.umount()
    assert hash_tree(lower) == before


def _make_wheel(dest: Path) -> Path:
    """A minimal pure-Python wheel, built by hand (no network, no build backend)."""
    name = "astridprobe-1.0-py3-none-any.whl"
    files = {
        "astridprobe/__init__.py": b"VALUE = 42\n",
        "astridprobe-1.0.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: astridprobe\nVersion: 1.0\n",
        "astridprobe-1.0.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, body in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(body)}")
    record.append("astridprobe-1.0.dist-info/RECORD,,")
    wheel = dest / name
    with zipfile.ZipFile(wheel, "w") as z:
        for path, body in files.items():
            z.writestr(path, body)
        z.writestr("astridprobe-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def test_venv_and_pip_install(tmp_path: Path, mount_session: Mount) -> None:
    s = mount_session()
    wheel = _make_wheel(tmp_path)
    sh(sys.executable, "-m", "venv", "venv", cwd=s.mnt)
    sh(str(s.mnt / "venv/bin/python"), "-m", "pip", "install", "-q", "--no-index",
       "--disable-pip-version-check", str(wheel), cwd=s.mnt)
    out = sh(str(s.mnt / "venv/bin/python"), "-c",
             "import astridprobe; print(astridprobe.VALUE)", cwd=s.mnt)
    assert out.strip() == "42"
    assert (s.upper / "venv" / "pyvenv.cfg").exists()


def test_sqlite_wal(mount_session: Mount) -> None:
    s = mount_session()
    db = s.mnt / "app.db"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    con.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    with con:
        con.executemany("INSERT INTO t (v) VALUES (?)", [(f"row{i}",) for i in range(2000)])
    reader = sqlite3.connect(db)
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 2000
    with con:
        con.execute("DELETE FROM t WHERE k % 2 = 0")
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 1000
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    reader.close()
    con.close()


def test_tar_extract(tmp_path: Path, mount_session: Mount) -> None:
    src = tmp_path / "src"
    for i in range(20):
        d = src / f"d{i % 4}" / f"e{i}"
        d.mkdir(parents=True)
        (d / "f.txt").write_text(f"file {i}\n" * i)
    os.symlink("d0", src / "link")
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as t:
        t.add(src, arcname="src")
    s = mount_session()
    subprocess.run(["tar", "xf", str(archive), "-C", str(s.mnt)], check=True)
    native = _extract_native(archive, tmp_path)
    assert tree_state(s.mnt / "src") == tree_state(native)
    assert _mtimes(s.mnt / "src") == _mtimes(native)


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_mtime_ns for p in root.rglob("*")}


def _extract_native(archive: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "native"
    dest.mkdir()
    subprocess.run(["tar", "xf", str(archive), "-C", str(dest)], check=True)
    return dest / "src"


def test_editor_style_save(tmp_path: Path, mount_session: Mount) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "notes.txt").write_text("old\n")
    os.chmod(lower / "notes.txt", 0o600)
    s = mount_session(lower)
    target = s.mnt / "notes.txt"
    tmp = s.mnt / ".notes.txt.swp"
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    os.write(fd, b"new\n")
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, target)
    assert target.read_text() == "new\n"
    assert sorted(os.listdir(s.mnt)) == ["notes.txt"]
    assert (lower / "notes.txt").read_text() == "old\n"


def test_rm_rf_deep_tree(tmp_path: Path, mount_session: Mount) -> None:
    lower = tmp_path / "lower"
    deep = lower
    for i in range(40):
        deep = deep / f"level{i}"
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("leaf")
    before = hash_tree(lower)
    s = mount_session(lower)
    (s.mnt / "level0" / "level1" / "added").write_text("added")
    subprocess.run(["rm", "-rf", str(s.mnt / "level0")], check=True)
    assert os.listdir(s.mnt) == []
    assert hash_tree(lower) == before
    shutil.rmtree(s.mnt, ignore_errors=True)  # empty mount: a no-op, and must not fail
