"""The copy a copy-up makes (copyup.py), attribute by attribute, now that a
regular file's attributes are set through its fd: owner before mode (a chown
clears set-id bits), xattrs, origin (its JSON unchanged: uppers written by
earlier versions must still decode), times last; and the base content kept
from the same bytes."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict
from pathlib import Path

import pytest

from astrid_fs.overlay.copyup import copy_up
from astrid_fs.overlay.whiteout import Origin, OverlayXattrs, get_origin
from tests.fs.conftest import kept_base
from tests.support.mounts import missing_part


@pytest.mark.parametrize("path,blake3", [
    ("src/a.py", None),
    ('we"ird\\name\twith\nctl', "ab" * 32),  # quotes, backslashes, controls
    ("caf\u00e9/\u6f22\u5b57/\U0001f600", None),  # non-ASCII (escaped, as json.dumps does)
    (os.fsdecode(b"raw/\xff\xfe"), None),  # undecodable bytes (lone surrogates)
])
def test_origin_json_is_what_it_was(path: str, blake3: str | None) -> None:
    o = Origin(path=path, kind="file", ino=12, dev=34, size=56, mtime_ns=78,
               mode=0o100644, blake3=blake3)
    assert o.encode() == json.dumps(asdict(o), sort_keys=True, separators=(",", ":")).encode()
    assert Origin.decode(o.encode()) == o


def test_copy_up_keeps_every_attribute_and_the_base(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing_part("root (chown and trusted.* xattrs)")
    session = tmp_path / "session"
    lower, upper, tmp = tmp_path / "lower", session / "upper", session / "work" / "astrid"
    for d in (lower, upper, tmp):
        d.mkdir(parents=True)
    (session / "bases.sqlite").write_bytes(b"")  # a session that records bases
    names = OverlayXattrs("trusted")
    (lower / "d").mkdir()
    f = lower / "d" / "tool"
    f.write_bytes(b"#!/bin/sh\necho hi\n")
    os.chown(f, 1234, 5678)
    os.chmod(f, 0o4755)
    os.setxattr(f, "user.note", b"kept")
    os.setxattr(f, names.origin, b"never copied")  # the overlay's own: private
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    (upper / "d").mkdir()
    lst = os.lstat(f)
    copy_up(os.fsencode(f), os.fsencode(upper / "d" / "tool"), os.fsencode(tmp), names,
            b"d/tool", sync=False)
    up = upper / "d" / "tool"
    ust = os.lstat(up)
    assert up.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (ust.st_uid, ust.st_gid) == (1234, 5678)
    assert stat.S_IMODE(ust.st_mode) == 0o4755  # the mode set after the chown
    assert ust.st_mtime_ns == 2_000_000_000
    assert os.getxattr(up, "user.note") == b"kept"
    assert get_origin(os.fsencode(up), names) == Origin.of_stat("d/tool", lst)
    assert kept_base(session, "d/tool") == (b"#!/bin/sh\necho hi\n", 2_000_000_000)
    assert os.listdir(tmp) == []  # nothing left in the work dir
