"""A cold walk of an untouched tree (LOOKUP and READDIRPLUS in directories
only the lower layer shows): the fast path must answer exactly what the
general resolution answers. FUSE operations called directly, no mount
(see test_ops_api.py for the stand-ins)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from astrid_fs.fuse.ops import FuseOps
from astrid_fs.fuse.shim import FH_INODE
from astrid_fs.overlay.layers import Layers
from astrid_fs.overlay.overlay import Overlay
from astrid_fs.overlay.whiteout import OverlayXattrs, default_xattr_ns

from .test_ops_api import CTX


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for d in (lower, upper, work / "astrid"):
        d.mkdir(parents=True)
    (lower / "src" / "deep").mkdir(parents=True)
    (lower / "src" / "a.py").write_text("a\n")
    (lower / "src" / "link").symlink_to("a.py")
    (lower / "src" / "deep" / "x").write_text("x\n")
    (lower / "lib").mkdir()
    os.link(lower / "src" / "a.py", lower / "lib" / "a2.py")  # a hard-linked pair
    return lower, upper, work


def make_ops(tree: tuple[Path, Path, Path]) -> FuseOps:
    lower, upper, work = tree
    ns = default_xattr_ns()
    overlay = Overlay(Layers(os.fsencode(lower), os.fsencode(upper), OverlayXattrs(ns)),
                      os.fsencode(work / "astrid"), redirects=ns == "trusted")
    ops = FuseOps(overlay, lower_ttl=1.0)
    ops.no_open = ops.no_opendir = True
    return ops


class Listing:
    """Stands in for the kernel's readdirplus buffer (takes everything)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, Any] = {}

    def reply(self, token: Any, name: bytes, attr: Any, next_id: int) -> bool:
        self.entries[name] = attr
        return True


@pytest.fixture
def listing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listing]:
    out = Listing()
    monkeypatch.setattr(pyfuse3, "readdir_reply", out.reply)
    yield out


async def test_lookup_in_a_lower_only_dir_is_the_lower_entry(
        tree: tuple[Path, Path, Path]) -> None:
    lower = tree[0]
    ops = make_ops(tree)
    src = await ops.lookup(1, b"src", CTX)
    for name in (b"a.py", b"link", b"deep"):
        entry = await ops.lookup(src.st_ino, name, CTX)
        st = os.lstat(lower / "src" / os.fsdecode(name))
        assert (entry.st_mode, entry.st_size, entry.st_mtime_ns) == \
            (st.st_mode, st.st_size, st.st_mtime_ns)
        assert entry.st_ino & ((1 << 48) - 1) == st.st_ino  # the lower inode, tagged
    assert (await ops.lookup(src.st_ino, b"missing", CTX)).st_ino == 0  # negative entry
    assert not (tree[1] / "src").exists()  # resolving never copies up


async def test_readdirplus_and_lookup_agree(tree: tuple[Path, Path, Path],
                                           listing: Listing) -> None:
    ops = make_ops(tree)
    src = await ops.lookup(1, b"src", CTX)
    await ops.readdir(FH_INODE | src.st_ino, 0, None)
    assert sorted(listing.entries) == [b".", b"..", b"a.py", b"deep", b"link"]
    for name in (b"a.py", b"deep", b"link"):
        looked_up = await ops.lookup(src.st_ino, name, CTX)
        listed = listing.entries[name]
        assert (listed.st_ino, listed.st_mode, listed.st_size) == \
            (looked_up.st_ino, looked_up.st_mode, looked_up.st_size)


async def test_hard_link_copied_up_under_another_name_shows_in_a_lower_only_dir(
        tree: tuple[Path, Path, Path], listing: Listing) -> None:
    """A lower-only directory may still hold a name whose file was copied up
    through another hard link: that name must show the upper copy (the fast
    path defers hard-linked files to the general resolution)."""
    ops = make_ops(tree)
    lib = await ops.lookup(1, b"lib", CTX)
    a2 = await ops.lookup(lib.st_ino, b"a2.py", CTX)
    await ops.write(FH_INODE | a2.st_ino, 0, b"new\n")
    src = await ops.lookup(1, b"src", CTX)
    a = await ops.lookup(src.st_ino, b"a.py", CTX)
    assert a.st_ino == a2.st_ino and a.st_nlink == 2
    assert await ops.read(FH_INODE | a.st_ino, 0, 10) == b"new\n"
    await ops.readdir(FH_INODE | src.st_ino, 0, None)
    assert listing.entries[b"a.py"].st_ino == a2.st_ino
    assert (tree[0] / "src" / "a.py").read_text() == "a\n"  # the lower stays as it was
