"""The overlay's rules as pure functions: facts about the entries at one
path in each layer go in, a resolution or a plan comes out. No syscalls,
no FUSE, no trio: tested with hypothesis alone (tests/fs/test_rules.py).

What they know (overlayfs's semantics):
- Layers are ordered top first (the upper, if any, then the lower layers).
- A whiteout hides the name in every layer beneath it and shows nothing.
- A directory merges with the directories of the same name beneath it,
  until an opaque directory, a whiteout or a non-directory; a non-directory
  shows alone and hides everything beneath it.
What they do not know: redirects (a renamed directory's upper names the
lower directory it merges with; resolved by the caller before asking), how
entries are read from disk, or remote trees.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class Kind(enum.Enum):
    MISSING = "missing"
    WHITEOUT = "whiteout"
    DIR = "dir"
    OTHER = "other"  # any non-directory: file, symlink, device, fifo, socket


@dataclass(frozen=True)
class Entry:
    """What one layer holds at a path."""

    kind: Kind
    opaque: bool = False  # directories only


def visible_layers(entries: Sequence[Entry]) -> list[int]:
    """Which layers show at a path, given each layer's entry there (top
    first, only layers where the parent directory merges): one index for a
    non-directory, every merged layer for a directory, [] for nothing."""
    shown: list[int] = []
    for i, entry in enumerate(entries):
        if entry.kind is Kind.MISSING:
            continue
        if entry.kind is Kind.WHITEOUT:
            break
        if shown and entry.kind is not Kind.DIR:
            break  # a non-directory beneath a directory does not merge
        shown.append(i)
        if entry.kind is not Kind.DIR or entry.opaque:
            break
    return shown


def merged_names(listings: Sequence[Mapping[bytes, Kind]]) -> list[bytes]:
    """The names a merged directory lists, given each merged layer's
    entries (top first): a whiteout hides the name beneath it."""
    shown: set[bytes] = set()
    hidden: set[bytes] = set()
    for listing in listings:
        for name, kind in listing.items():
            if name in shown or name in hidden:
                continue
            (hidden if kind is Kind.WHITEOUT else shown).add(name)
    return sorted(shown)


class Removal(enum.Enum):
    """How the upper changes when a name is removed from the merged view."""

    DELETE = "delete"  # remove the upper entry; nothing beneath shows
    REPLACE_WITH_WHITEOUT = "replace-with-whiteout"  # upper entry hides a lower one
    WHITEOUT = "whiteout"  # nothing in the upper: a whiteout hides the lower


def removal(upper: Kind, lower_shows: bool) -> Removal:
    """The plan for removing a visible name (unlink, rmdir, rename's source)."""
    if upper in (Kind.DIR, Kind.OTHER):
        return Removal.REPLACE_WITH_WHITEOUT if lower_shows else Removal.DELETE
    if not lower_shows:
        raise ValueError("nothing visible to remove")
    return Removal.WHITEOUT


@dataclass(frozen=True)
class Creation:
    """How a new entry takes a name in the upper."""

    over_whiteout: bool  # the name holds a whiteout that the entry replaces
    opaque: bool  # a new directory must not merge with what lies beneath


def creation(upper: Kind, lower_has: bool, is_dir: bool) -> Creation | None:
    """The plan for a new entry at a name (mknod, mkdir, create, symlink,
    link); None if the name is taken (visible: EEXIST). `lower_has`: the
    lower layers show an entry there, unless the upper hides it."""
    if upper in (Kind.DIR, Kind.OTHER) or (upper is Kind.MISSING and lower_has):
        return None
    shadowed = upper is Kind.WHITEOUT
    return Creation(over_whiteout=shadowed, opaque=is_dir and shadowed)


class DirMove(enum.Enum):
    """How a directory is renamed."""

    RENAME = "rename"  # upper-only: a plain rename
    REDIRECT = "redirect"  # merges a lower dir: rename + redirect xattr (trusted uppers)
    COPY_UP_TREE = "copy-up-tree"  # merges a lower dir, no redirects: copy up whole, opaque


def dir_move(merges_lower: bool, redirects: bool) -> DirMove:
    if not merges_lower:
        return DirMove.RENAME
    return DirMove.REDIRECT if redirects else DirMove.COPY_UP_TREE
