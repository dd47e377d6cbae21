"""Issue 10 item 7: review of changes under an S3 source is as good as local:
patches and stats against the base object, renames as renames, the bucket
named in messages, the ETag under its own name, symlinks stored as rclone
stores them (`NAME.rclonelink`)."""
# ruff: noqa: F811  (fixtures imported from s3_fixture are parameters here)

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fs.conftest import kept_text
from tests.fs.s3_fixture import ACCESS_KEY, S3Target, s3, s3_server  # noqa: F401
from tests.support.mounts import MountedSession

Mount = Callable[..., MountedSession]
LINES = "".join(f"line {i}\n" for i in range(1, 8))


@pytest.fixture
def mounted(s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            mount_session: Mount) -> MountedSession:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "astrid-review-secret")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    s3.put("data/edit.csv", b"a,b\n1,2\n")
    s3.put("data/gone.csv", b"x\ny\n")
    s3.put("data/old-name.csv", b"moved\n")
    for key in ("data/saved.txt", "data/appended.txt", "data/both.txt"):
        s3.put(key, LINES.encode())
    lower = tmp_path / "project"
    (lower / "mnt").mkdir(parents=True)
    table = s3.mount_table(tmp_path)
    s = mount_session(lower, None, "--mounts", str(table))
    data = s.mnt / "mnt" / "s3" / "data"
    with open(data / "edit.csv", "a") as f:
        f.write("3,4\n")
    (data / "gone.csv").unlink()
    os.rename(data / "old-name.csv", data / "new-name.csv")
    return s


def test_patch_stat_and_rename_against_the_base_object(mounted: MountedSession,
                                                       s3: S3Target) -> None:
    s = mounted
    lines = s.cli("diff", s.name).stdout.splitlines()
    assert lines == ["M  mnt/s3/data/edit.csv", "D  mnt/s3/data/gone.csv",
                     "R  mnt/s3/data/old-name.csv -> mnt/s3/data/new-name.csv"]
    patch = s.cli("diff", s.name, "--patch").stdout
    assert ("--- a/mnt/s3/data/edit.csv\n+++ b/mnt/s3/data/edit.csv\n"
            "@@ -1,2 +1,3 @@\n a,b\n 1,2\n+3,4\n") in patch
    assert "deleted file mode 100644\n--- a/mnt/s3/data/gone.csv\n+++ /dev/null\n" in patch
    assert "-x\n-y\n" in patch
    assert ("rename from mnt/s3/data/old-name.csv\n"
            "rename to mnt/s3/data/new-name.csv\n") in patch
    stat = s.cli("diff", s.name, "--stat").stdout
    assert stat.splitlines()[-1] == " 3 changes, 1 insertions(+), 2 deletions(-)"
    (edit,) = [c for c in json.loads(s.cli("diff", s.name, "--json").stdout)
               if c["path"] == "mnt/s3/data/edit.csv"]
    assert edit["base"]["blake3"] is None and edit["base"]["etag"]
    done = s.cli("commit", s.name)
    assert done.stdout.splitlines()[-1] == f"committed 3 change(s) to {s3.source}"
    assert s3.get("data/new-name.csv") == b"moved\n"
    assert {"data/old-name.csv", "data/gone.csv"}.isdisjoint(s3.keys())
    assert s3.get("data/edit.csv") == b"a,b\n1,2\n3,4\n"
    assert s.cli("diff", s.name).stdout == ""


def test_a_symlink_under_s3_is_stored_as_rclone_does(mounted: MountedSession,
                                                     s3: S3Target) -> None:
    s = mounted
    data = s.mnt / "mnt" / "s3" / "data"
    (data / "link").symlink_to("edit.csv")
    assert "A  mnt/s3/data/link" in s.cli("diff", s.name).stdout.splitlines()
    s.cli("commit", s.name, "mnt/s3/data/link")
    assert s3.get("data/link.rclonelink") == b"edit.csv"  # rclone --links' format
    assert "data/link" not in set(s3.keys())
    assert s.cli("diff", s.name, "mnt/s3/data/edit.csv").stdout  # the rest is still there
    table = s.root / "mounts.toml"
    s.umount()
    s.mount("--mounts", str(table))
    assert os.readlink(data / "link") == "edit.csv"
    assert "mnt/s3/data/link" not in s.cli("diff", s.name).stdout
    os.unlink(data / "link")
    s.cli("commit", s.name, "mnt/s3/data/link")
    assert "data/link.rclonelink" not in set(s3.keys())


def _conflicts(s: MountedSession) -> set[str]:
    return {c["path"] for c in json.loads(s.cli("diff", s.name, "--json").stdout)
            if c["conflict"]}


def test_merge_and_update_against_the_bucket(mounted: MountedSession, s3: S3Target) -> None:
    """Gap: S3 objects the session changed and the user changed in the
    bucket merge three-way against the base object the overlay kept when
    it copied them up (`resolve --merge`, `update`); the commit then writes
    the merged objects. An editor's save (`sed -i`: temp file + rename over
    the object) keeps the base too: a rename fetches its destination before
    hiding it."""
    s = mounted
    data = s.mnt / "mnt" / "s3" / "data"
    with open(data / "appended.txt", "a") as f:  # a copy-up
        f.write("line 8 by the session\n")
    with open(data / "both.txt", "r+") as f:  # a copy-up, rewritten in place
        f.write(LINES.replace("line 2\n", "line 2 by the session\n"))
    subprocess.run(["sed", "-i", "s/^line 1$/line 1 by the session/", str(data / "saved.txt")],
                   check=True)
    s3.put("data/appended.txt", LINES.replace("line 1\n", "line 1 by the user\n").encode())
    s3.put("data/both.txt", LINES.replace("line 6\n", "line 6 by the user\n").encode())
    s3.put("data/saved.txt", LINES.replace("line 7\n", "line 7 by the user\n").encode())
    for name in ("appended.txt", "both.txt", "saved.txt"):
        assert kept_text(s.root, f"mnt/s3/data/{name}") == LINES
    assert {"mnt/s3/data/saved.txt", "mnt/s3/data/appended.txt",
            "mnt/s3/data/both.txt"} <= _conflicts(s)
    done = s.cli("resolve", s.name, "mnt/s3/data/both.txt", "--merge")
    assert done.stdout.startswith("merged")
    both = LINES.replace("line 2\n", "line 2 by the session\n").replace(
        "line 6\n", "line 6 by the user\n")
    assert (data / "both.txt").read_text() == both
    done = s.cli("update", s.name)
    results = {line.split()[1].rstrip(":"): line.split()[0] for line in done.stdout.splitlines()}
    assert results == {"mnt/s3/data/appended.txt": "merged", "mnt/s3/data/saved.txt": "merged"}
    appended = LINES.replace("line 1\n", "line 1 by the user\n") + "line 8 by the session\n"
    assert (data / "appended.txt").read_text() == appended
    assert (data / "saved.txt").read_text() == LINES.replace(
        "line 1\n", "line 1 by the session\n").replace("line 7\n", "line 7 by the user\n")
    assert _conflicts(s) == set()
    s.cli("commit", s.name, "mnt/s3/data/both.txt", "mnt/s3/data/appended.txt")
    assert s3.get("data/both.txt") == both.encode()
    assert s3.get("data/appended.txt") == appended.encode()
    assert kept_text(s.root, "mnt/s3/data/both.txt") is None  # landed: its base content goes
