"""plugin.toml and plugins.lock: parsing, line-numbered errors, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from astrid_runtime.errors import LockfileError, ManifestError, VerifyError
from astrid_runtime.grants import Grants
from astrid_runtime.lockfile import LockEntry, Lockfile, load_lockfile, read_verified
from astrid_runtime.manifest import load_manifest

GOOD = """name = "notes"
version = "0.1.0"
component = "build/notes.wasm"
config = "hello"

[capabilities]
publish = ["notes.>"]
subscribe = ["notes.*", "user.input"]
kv = true

[limits]
memory_mb = 32
call_timeout_ms = 250
"""


def manifest_error(tmp_path: Path, text: str) -> str:
    (tmp_path / "plugin.toml").write_text(text)
    with pytest.raises(ManifestError) as e:
        load_manifest(tmp_path)
    return str(e.value)


def test_good_manifest(tmp_path: Path) -> None:
    (tmp_path / "plugin.toml").write_text(GOOD)
    m = load_manifest(tmp_path)
    assert (m.name, m.version, m.config) == ("notes", "0.1.0", "hello")
    assert m.component == tmp_path / "build" / "notes.wasm"
    assert m.asks == Grants(publish=("notes.>",), subscribe=("notes.*", "user.input"), kv=True)
    assert m.limits.memory_bytes == 32 * 1024 * 1024 and m.limits.call_timeout_ms == 250


@pytest.mark.parametrize(("edit", "expected"), [
    (("memory_mb = 32", 'memory_mb = "big"'), ":12: memory_mb must be int, not str"),
    (('kv = true', 'kv = "yes"'), ":9: kv must be bool, not str"),
    (('publish = ["notes.>"]', 'publish = ["notes.>.x"]'),
     ":7: publish: pattern 'notes.>.x': '>' must be the last token"),
    (('name = "notes"', 'name = "Notes!"'), ":1: name: must be lowercase"),
    (("call_timeout_ms = 250", "call_timeout_ms = -1"), ":13: call_timeout_ms: must not be"),
    (("[limits]", "[limits]\nfuel = 3"), ":12: unknown key 'fuel'"),
    (('config = "hello"', 'config = "hello'), "Illegal character"),
])
def test_manifest_errors_name_the_line(tmp_path: Path, edit: tuple[str, str],
                                       expected: str) -> None:
    message = manifest_error(tmp_path, GOOD.replace(*edit))
    assert message.startswith(str(tmp_path / "plugin.toml"))
    assert expected in message
    assert "\n" not in message


def test_manifest_missing_key(tmp_path: Path) -> None:
    assert "missing required key 'component'" in manifest_error(
        tmp_path, 'name = "a"\nversion = "1"\n')


def entry(tmp_path: Path, content: bytes) -> LockEntry:
    from astrid_runtime.engine import digest

    wasm = tmp_path / "c.wasm"
    wasm.write_bytes(content)
    return LockEntry("alpha", "1.0", tmp_path, wasm, digest(content),
                     Grants(publish=("a.>",), kv=True))


def test_lockfile_round_trip_and_atomic_save(tmp_path: Path) -> None:
    lock = Lockfile(tmp_path / "plugins.lock").with_entry(entry(tmp_path, b"\0asm"))
    lock.save()
    assert [p.name for p in tmp_path.iterdir()].count("plugins.lock") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".plugins.lock")]
    again = load_lockfile(tmp_path / "plugins.lock")
    assert again.entries == lock.entries
    assert read_verified(again.entries[0]) == b"\0asm"


def test_verify_refuses_changed_bytes(tmp_path: Path) -> None:
    e = entry(tmp_path, b"\0asm")
    e.component.write_bytes(b"\0asm!")
    with pytest.raises(VerifyError, match=r"does not match plugins\.lock"):
        read_verified(e)
    e.component.unlink()
    with pytest.raises(VerifyError, match="is missing"):
        read_verified(e)


@pytest.mark.parametrize(("text", "expected"), [
    ("version = 2\n", ":1: version must be 1"),
    ('version = 1\n[[plugin]]\nname = "a"\nversion = "1"\ncomponent = "x"\nblake3 = "zz"\n',
     ":6: blake3: must be 64 lowercase hex digits"),
    ('version = 1\n[[plugin]]\nname = "a"\n', ":2: [[plugin]] is missing 'version'"),
    ('version = 1\n[[plugin]]\nname = "a"\nversion = "1"\ncomponent = "x"\nblake3 = "'
     + "0" * 64 + '"\n[plugin.grants]\nkv = 1\n', ":8: kv must be bool, not int"),
    ("version = [\n", "plugins.lock: "),
])
def test_lockfile_errors_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "plugins.lock"
    path.write_text(text)
    with pytest.raises(LockfileError) as e:
        load_lockfile(path)
    assert expected in str(e.value) and "\n" not in str(e.value)
