"""Name-only READDIRPLUS entries (fuse/name_only.py, shim part 11): a cold
walk that wants names gets them without an lstat per entry, and what a
listing says of an entry (d_ino, d_type) is what a lookup of it says.

Three tiers: the policy alone; the FUSE operations called directly (the
listing stand-in from test_cold_walk.py); a real mount, through the kernel."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from astrid_fs.fuse.name_only import NameOnlyListings
from astrid_fs.fuse.shim import FH_INODE, GEN_NAME_ONLY
from tests.support.mounts import MountedSession

from .test_cold_walk import CTX, Listing, listing, make_ops, tree  # noqa: F401  (fixtures)

Mount = Callable[..., MountedSession]


# ---- the policy ----------------------------------------------------------------

def test_listings_are_name_only_until_a_reader_looks_up_what_they_listed() -> None:
    policy = NameOnlyListings()
    names = {b"f%d" % i for i in range(40)}
    assert policy.listing(10, names, len(names))
    for i in range(9):  # a few lookups, and names never listed (.gitignore probes)
        policy.looked_up(10, b"f%d" % i)
        policy.looked_up(10, b".gitignore")
    assert policy.listing(11, names, len(names))  # 9 of 40: still names
    policy.looked_up(10, b"f9")  # a quarter of them: this reader stats
    full = [policy.listing(12 + i, names, len(names))
            for i in range(NameOnlyListings.FULL_AFTER_LOOKUPS)]
    assert not any(full)
    assert policy.listing(99, names, len(names))  # then one probe with names again


def test_with_the_shim_listing_one_count_serves_both() -> None:
    """Where the shim lists lower-only directories, its listings and the
    daemon's count down one count: once it is spent the daemon probes with
    names at once, not after as many full listings of its own (the bench's
    stat walk had 165 of its 421 directories listed in Python that way)."""
    policy = NameOnlyListings()
    shim = {"left": 0}

    def take() -> int:
        if shim["left"] <= 0:
            return 0
        shim["left"] -= 1
        return 1

    policy.full_take = take
    policy.full_hook = lambda n: shim.__setitem__("left", n)
    names = {b"f%d" % i for i in range(8)}
    assert policy.listing(1, names, len(names))
    for i in range(8):
        policy.looked_up(1, b"f%d" % i)
    assert shim["left"] == NameOnlyListings.FULL_AFTER_LOOKUPS
    shim["left"] = 3  # the shim listed all but three itself
    assert [policy.listing(2 + i, names, len(names)) for i in range(4)] == \
        [False, False, False, True]
    assert shim["left"] == 0


def test_big_and_empty_directories_are_listed_in_full() -> None:
    policy = NameOnlyListings()
    many = NameOnlyListings.MAX_ENTRIES + 1
    assert not policy.listing(1, set(), many)  # a wrong guess would cost that many lookups
    assert not policy.listing(2, set(), 0)


# ---- the operations, no mount ---------------------------------------------------

async def test_name_only_entries_carry_what_a_lookup_says(
        tree: tuple[Path, Path, Path], listing: Listing) -> None:  # noqa: F811
    ops = make_ops(tree)
    ops.name_only = True  # as with the shim loaded
    src = await ops.lookup(1, b"src", CTX)
    nodes_before = len(ops.table)
    await ops.readdir(FH_INODE | src.st_ino, 0, None)
    sent = listing.entries
    assert {n for n, e in sent.items() if e.generation == GEN_NAME_ONLY} == {b"a.py", b"link"}
    assert sent[b"deep"].generation == 0  # a directory: full (the kernel descends into it)
    assert len(ops.table) == nodes_before + 1  # only `deep` got a node and a lookup
    for name in (b"a.py", b"link"):
        looked_up = await ops.lookup(src.st_ino, name, CTX)
        assert sent[name].st_ino == looked_up.st_ino
        assert stat.S_IFMT(sent[name].st_mode) == stat.S_IFMT(looked_up.st_mode)


async def test_without_the_shim_nothing_is_name_only(
        tree: tuple[Path, Path, Path], listing: Listing) -> None:  # noqa: F811
    """No shim, no nodeid 0: a marked entry would hand the kernel an inode
    the daemon never counted."""
    ops = make_ops(tree)
    assert not ops.name_only  # tests run without the shim preloaded
    src = await ops.lookup(1, b"src", CTX)
    await ops.readdir(FH_INODE | src.st_ino, 0, None)
    assert all(e.generation == 0 for e in listing.entries.values())


# ---- through the kernel ----------------------------------------------------------

def test_listing_and_stat_agree_through_the_mount(tmp_path: Path, mount_session: Mount) -> None:
    lower = tmp_path / "lower"
    for d in ("a", "b"):
        (lower / d / "sub").mkdir(parents=True)
        for i in range(30):
            (lower / d / f"f{i}").write_text(str(i))
        (lower / d / "ln").symlink_to("f1")
    os.link(lower / "a" / "f2", lower / "b" / "hard")
    s = mount_session(lower)
    (s.mnt / "b" / "f3").write_text("copied up")  # b is now merged: listed in full
    for d in ("a", "b"):
        listed = {e.name: (e.inode(), e.is_dir(follow_symlinks=False), e.is_symlink())
                  for e in os.scandir(s.mnt / d)}
        for name, (ino, is_dir, is_link) in listed.items():
            st = os.lstat(s.mnt / d / name)
            assert (ino, is_dir, is_link) == (st.st_ino, stat.S_ISDIR(st.st_mode),
                                              stat.S_ISLNK(st.st_mode)), name
    assert os.lstat(s.mnt / "a" / "f2").st_ino == os.lstat(s.mnt / "b" / "hard").st_ino
    assert (s.mnt / "a" / "f3").read_text() == "3" and (s.mnt / "b" / "f3").read_text() == \
        "copied up"
    reply = s.control("stats")
    assert reply["requests"].get("listing_name_only", 0) >= 1, \
        "no name-only listing: is the FUSE shim (part 11) loaded?"
