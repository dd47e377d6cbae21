"""mounts.toml: parsing, one-line errors naming the line, longest prefix,
round trip through to_toml, the example at the repo root, `astrid-fs drivers`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astrid_fs.cli import main
from astrid_fs.drivers.cache import CachingDriver
from astrid_fs.drivers.readonly import ReadOnlyDriver
from astrid_fs.errors import UsageError
from astrid_fs.mounttable import MountEntry, MountTable, open_entry

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
[[mount]]
path = "/"
source = "project"

[[mount]]
path = "/mnt/s3/"
source = "s3://bucket/prefix"
endpoint = "http://127.0.0.1:4568"
region = "us-east-1"
read_only = true
cache_mib = 64

[[mount]]
path = "/mnt/s3/deeper"
source = "s3://other"
metadata_ttl_s = 5
"""


def _error(text: str) -> str:
    with pytest.raises(UsageError) as info:
        MountTable.from_toml(text, origin="m.toml", base_dir=Path("/base"))
    msg = str(info.value)
    assert "\n" not in msg and info.value.exit_code == 2
    return msg


def test_parse_and_longest_prefix() -> None:
    table = MountTable.from_toml(GOOD, base_dir=Path("/base"))
    assert [e.path for e in table.entries] == ["/", "/mnt/s3", "/mnt/s3/deeper"]
    root, s3, deeper = table.entries
    assert root.source == "/base/project" and root.driver == "local"
    assert (s3.driver, s3.read_only, s3.cache_mib, s3.line) == ("s3", True, 64, 5)
    assert s3.options == (("endpoint", "http://127.0.0.1:4568"), ("region", "us-east-1"))
    assert deeper.metadata_ttl_s == 5.0
    assert table.resolve("/mnt/s3/a/b.csv") == (s3, "a/b.csv")
    assert table.resolve("/mnt/s3") == (s3, "")
    assert table.resolve("/mnt/s3/deeper/x") == (deeper, "x")
    assert table.resolve("/mnt/s3deeper") == (root, "mnt/s3deeper")
    assert table.resolve("/") == (root, "")
    assert [e.path for e in table.remotes()] == ["/mnt/s3/deeper", "/mnt/s3"]


def test_round_trip_through_to_toml(tmp_path: Path) -> None:
    table = MountTable.from_toml(GOOD, base_dir=Path("/base"))
    copy = tmp_path / "session" / "mounts.toml"
    copy.parent.mkdir()
    table.write(copy)
    assert MountTable.load(copy) == table
    assert MountTable.from_toml(table.to_toml()) == table


def test_with_root_adds_the_project() -> None:
    table = MountTable.from_toml('[[mount]]\npath = "/data"\nsource = "s3://b"\n')
    assert table.root() is None and table.resolve("/src") is None
    full = table.with_root(Path("/proj"))
    assert full.root() == MountEntry("/", "/proj", "local", cache_mib=0)
    assert full.with_root(Path("/other")) is full


def test_syntax_error_names_the_line() -> None:
    assert _error('[[mount]]\npath = "/"\nsource = \n').startswith("m.toml:3: ")


@pytest.mark.parametrize(("text", "line", "words"), [
    ('[[mount]]\npath = "/"\nsource = "."\n\n[[mount]]\npath = "//"\nsource = "x"\n',
     6, "duplicate path '/' (first at line 1)"),
    ('[[mount]]\nsource = "."\npath = "mnt/x"\n', 3, "must be absolute"),
    ('[[mount]]\npath = "/a/../b"\nsource = "."\n', 2, "'.' or '..'"),
    ('[[mount]]\npath = "/a"\n', 1, "has no 'source'"),
    ('[[mount]]\npath = "/a"\nsource = "gopher://x"\n', 3, "no driver for gopher"),
    ('[[mount]]\npath = "/a"\nsource = "s3://b"\n\nendpointt = "http://x"\n', 5,
     "no option 'endpointt'"),
    ('[[mount]]\npath = "/a"\nsource = "s3://b"\nsecret_access_key = "abc123"\n', 4,
     "credentials come from the AWS chain"),
    ('[[mount]]\npath = "/a"\nsource = "s3://b"\nread_only = "yes"\n', 4, "true or false"),
    ('[[mount]]\npath = "/a"\nsource = "s3://b"\ncache_mib = -1\n', 4, ">= 0"),
    ('[[mount]]\npath = "/a"\nsource = "s3://b"\ntimeout_s = "fast"\n', 4, "must be float"),
    ('[[mount]]\npath = "/a"\nsource = "s3:///nobucket"\n', 3, "expected s3://BUCKET"),
    ('[[mount]]\npath = "/a"\nsource = "."\ncolour = 1\n', 4, "local driver has no option"),
])
def test_semantic_errors_name_the_line(text: str, line: int, words: str) -> None:
    msg = _error(text)
    assert msg.startswith(f"m.toml:{line}: "), msg
    assert words in msg


def test_secret_value_is_never_echoed() -> None:
    assert "abc123" not in _error(
        '[[mount]]\npath = "/a"\nsource = "s3://b"\nsecret_access_key = "abc123"\n')


def test_other_shapes_are_refused() -> None:
    assert "unknown top-level key 'mounts'" in _error('[[mounts]]\npath = "/"\n')
    assert "list of [[mount]]" in _error('mount = "x"\n')
    assert "must be a table" in _error("mount = [1]\n")


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        MountTable.load(tmp_path / "nope.toml")


def test_the_example_at_the_repo_root_parses_and_opens() -> None:
    table = MountTable.load(ROOT / "mounts.toml")
    root = table.root()
    assert root is not None and Path(root.source) == ROOT
    s3 = table.resolve("/mnt/s3/x")
    assert s3 is not None and s3[0].source == "s3://bucket/prefix" and s3[0].read_only
    drv = open_entry(s3[0])  # no network until check()
    assert isinstance(drv, ReadOnlyDriver) and isinstance(drv.inner, CachingDriver)
    assert drv.is_remote and drv.local_root is None
    drv.close()
    local = open_entry(root)
    assert local.local_root == ROOT and not isinstance(local, CachingDriver)


def test_drivers_verb_lists_local_and_s3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drivers", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    by_name = {d["name"]: d for d in listed["drivers"]}
    assert by_name["s3"]["schemes"] == ["s3://"] and "endpoint" in by_name["s3"]["options"]
    assert by_name["local"]["entry_point"] == "astrid_fs.drivers.local:SPEC"
    assert main(["drivers"]) == 0
    assert "s3://" in capsys.readouterr().out
