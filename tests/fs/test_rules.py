"""The overlay rules (astrid_fs/overlay/rules.py) tested alone, with
hypothesis and no mount; and the lower-stack resolution built on them
(astrid_fs/overlay/stack.py) against kernel overlayfs over random layer
trees on disk."""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from astrid_fs.overlay.rules import (
    Creation,
    Entry,
    Kind,
    Removal,
    creation,
    merged_names,
    removal,
    visible_layers,
)
from astrid_fs.overlay.stack import LowerStack
from astrid_fs.overlay.whiteout import OverlayXattrs

entries = st.builds(Entry, st.sampled_from(list(Kind)), st.booleans())


@given(st.lists(entries, max_size=6))
def test_visible_layers_follow_overlayfs(layers: list[Entry]) -> None:
    shown = visible_layers(layers)
    assert shown == sorted(shown)
    assert all(layers[i].kind in (Kind.DIR, Kind.OTHER) for i in shown)
    first = next((e for e in layers if e.kind is not Kind.MISSING), None)
    # Something shows exactly when the topmost entry is not a whiteout.
    assert bool(shown) == (first is not None and first.kind is not Kind.WHITEOUT)
    if shown and layers[shown[0]].kind is Kind.OTHER:
        assert shown == [shown[0]]  # a non-directory shows alone
    for a, b in itertools.pairwise(shown):
        assert layers[a].kind is Kind.DIR and not layers[a].opaque
        # nothing between two merged dirs but missing entries
        assert all(layers[k].kind is Kind.MISSING for k in range(a + 1, b))
    if shown:
        last = shown[-1]
        below = [e for e in layers[last + 1:] if e.kind is not Kind.MISSING]
        if below and layers[last].kind is Kind.DIR and not layers[last].opaque:
            assert below[0].kind is not Kind.DIR  # merging stopped for a reason


names_ = st.sampled_from([b"a", b"b", b"c", b"d"])


@given(st.lists(st.dictionaries(names_, st.sampled_from([Kind.WHITEOUT, Kind.DIR, Kind.OTHER])),
                max_size=4))
def test_merged_names_hide_beneath_whiteouts(listings: list[dict[bytes, Kind]]) -> None:
    names = merged_names(listings)
    for name in names:
        top = next(listing[name] for listing in listings if name in listing)
        assert top is not Kind.WHITEOUT
    for listing in listings:
        for name, kind in listing.items():
            top = next(lst[name] for lst in listings if name in lst)
            assert (name in names) == (top is not Kind.WHITEOUT)
            del kind


def view(upper: Entry, lower: Entry) -> list[int]:
    return visible_layers([upper, lower])


@given(st.sampled_from([Kind.DIR, Kind.OTHER, Kind.MISSING, Kind.WHITEOUT]),
       st.sampled_from([Kind.DIR, Kind.OTHER, Kind.MISSING]))
def test_removal_leaves_nothing_visible(upper: Kind, lower: Kind) -> None:
    lower_entry = Entry(lower)
    if not view(Entry(upper), lower_entry):
        return  # nothing visible: removal is ENOENT before any plan
    lower_shows = lower is not Kind.MISSING
    plan = removal(upper if upper in (Kind.DIR, Kind.OTHER) else Kind.MISSING, lower_shows)
    after = {Removal.DELETE: Entry(Kind.MISSING),
             Removal.REPLACE_WITH_WHITEOUT: Entry(Kind.WHITEOUT),
             Removal.WHITEOUT: Entry(Kind.WHITEOUT)}[plan]
    assert view(after, lower_entry) == []
    if not lower_shows:
        assert plan is Removal.DELETE  # no whiteout litter over nothing


@given(st.sampled_from([Kind.MISSING, Kind.WHITEOUT]),
       st.sampled_from([Kind.DIR, Kind.OTHER, Kind.MISSING]), st.booleans())
def test_creation_shows_only_the_new_entry(upper: Kind, lower: Kind, is_dir: bool) -> None:
    lower_entry = Entry(lower)
    plan = creation(upper, lower is not Kind.MISSING, is_dir)
    if view(Entry(upper), lower_entry):
        assert plan is None  # the name is visible: creating it is EEXIST
        return
    assert isinstance(plan, Creation)
    assert plan.over_whiteout == (upper is Kind.WHITEOUT)
    new = Entry(Kind.DIR if is_dir else Kind.OTHER, opaque=plan.opaque)
    # The new entry shows, and a new directory merges with nothing beneath.
    assert view(new, lower_entry) == [0]


# ---- the stack against kernel overlayfs --------------------------------

layer_tree = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d/x", "d/y", "e/x"]),
    st.sampled_from(["file", "dir", "whiteout", "opaque", "redirect:/d", "redirect:/e",
                     "redirect:d"]), max_size=5)


def _materialise(root: Path, tree: dict[str, str], names: OverlayXattrs) -> None:
    root.mkdir()
    for rel, kind in sorted(tree.items()):
        path = root / rel
        if not path.parent.is_dir():
            if path.parent.exists() or path.parent.is_symlink():
                continue  # a file where this layer wants a directory: skip
            path.parent.mkdir(parents=True)
        if path.exists():
            continue
        if kind == "file":
            path.write_text(f"{root.name}:{rel}\n")
        elif kind == "whiteout":
            os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        else:
            path.mkdir()
            if kind == "opaque":
                os.setxattr(path, names.opaque, b"y")
            elif kind.startswith("redirect:"):
                os.setxattr(path, names.redirect, kind[len("redirect:"):].encode())


def _candidates(trees: list[dict[str, str]]) -> list[str]:
    paths = {p for tree in trees for p in tree}
    paths |= {p.rsplit("/", 1)[0] for p in paths if "/" in p}
    return sorted(paths)


def _by_lookup(root: Path, paths: list[str]) -> dict[str, str]:
    """What the kernel shows: its listings, keeping only names its lookups
    find (its readdir of a non-merged lower directory lists whiteouts raw;
    lookups never show them), plus the candidate paths looked up directly."""
    out: dict[str, str] = {}

    def visit(rel: str) -> None:
        p = root / rel if rel else root
        try:
            st_ = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            return
        if rel:
            out[rel] = "dir" if stat.S_ISDIR(st_.st_mode) else p.read_text()
        if stat.S_ISDIR(st_.st_mode):
            for name in os.listdir(p):
                visit(f"{rel}/{name}" if rel else name)

    visit("")
    for rel in paths:
        if rel not in out:
            visit(rel)
    return out


def _by_stack(stack: LowerStack, paths: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for rel in paths:
        st_ = stack.stat(os.fsencode(rel))
        if st_ is None:
            continue
        out[rel] = "dir" if stat.S_ISDIR(st_.st_mode) else \
            Path(os.fsdecode(stack.path(os.fsencode(rel)))).read_text()
    return out


def _listed(stack: LowerStack, rel: bytes = b"") -> set[str]:
    out: set[str] = set()
    for name in stack.names(rel):
        child = rel + b"/" + name if rel else name
        out.add(os.fsdecode(child))
        st_ = stack.stat(child)
        assert st_ is not None, child
        if stat.S_ISDIR(st_.st_mode):
            out |= _listed(stack, child)
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(layer_tree, min_size=2, max_size=3))
def test_lower_stack_matches_kernel_overlayfs(trees: list[dict[str, str]]) -> None:
    assert os.geteuid() == 0, "kernel overlayfs needs root (CI runs as root)"
    names = OverlayXattrs("trusted")
    base = Path(tempfile.mkdtemp(prefix="astrid-rules-"))
    try:
        roots = []
        for i, tree in enumerate(trees):
            _materialise(base / f"l{i}", tree, names)
            roots.append(base / f"l{i}")
        mnt = base / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        "lowerdir=" + ":".join(map(str, roots)) + ",redirect_dir=follow",
                        str(mnt)], check=True)
        paths = _candidates(trees)
        try:
            want = _by_lookup(mnt, paths)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        stack = LowerStack(tuple(os.fsencode(r) for r in roots), names)
        assert _by_stack(stack, sorted(set(paths) | set(want))) == want
        # Listings agree with lookups: every listed name resolves, every
        # visible path is listed.
        assert _listed(stack) == set(want)
    finally:
        shutil.rmtree(base)
