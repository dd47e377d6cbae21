"""Compare directory trees by what a user sees: kind, mode, content, link
target, user xattrs (and optionally mtimes) — never by inode numbers."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

_PRIVATE = ("trusted.overlay.", "trusted.astrid.", "user.overlay.", "user.astrid.")


@dataclass(frozen=True)
class Entry:
    kind: str
    mode: int
    body: str  # sha256 of content, link target, "" for dirs, rdev for devices
    xattrs: tuple[tuple[str, bytes], ...]
    mtime_ns: int | None


def _xattrs(path: str, private: bool = False) -> tuple[tuple[str, bytes], ...]:
    try:
        keys = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    found = []
    for key in sorted(keys):
        if (key.startswith(_PRIVATE) and not private) or key == "security.selinux":
            continue
        found.append((key, os.getxattr(path, key, follow_symlinks=False)))
    return tuple(found)


def entry_of(path: str, mtimes: bool = False, private: bool = False) -> Entry:
    st = os.lstat(path)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        kind, body = "dir", ""
    elif stat.S_ISLNK(mode):
        kind, body = "symlink", os.readlink(path)
    elif stat.S_ISREG(mode):
        with open(path, "rb") as f:
            kind, body = "file", hashlib.sha256(f.read()).hexdigest()
    else:
        kind, body = "other", f"{stat.S_IFMT(mode)}:{st.st_rdev}"
    mt = st.st_mtime_ns if mtimes and kind in ("file", "symlink") else None
    perm = 0 if kind == "symlink" else stat.S_IMODE(mode)
    return Entry(kind, perm, body, _xattrs(path, private), mt)


def tree_state(root: str | os.PathLike[str], mtimes: bool = False,
               only: list[str] | None = None, private: bool = False) -> dict[str, Entry]:
    """Every entry under `root` (relative posix paths, root itself excluded),
    restricted to the subtrees named in `only` when given; `private` keeps
    the overlay's own xattrs (to compare upper layers exactly)."""
    base = os.fspath(root)
    found: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            if only is not None and not any(
                    rel == p or rel.startswith(p + "/") for p in only):
                continue
            found[rel] = entry_of(full, mtimes, private)
    return found


def tree_diff(a: dict[str, Entry], b: dict[str, Entry]) -> list[str]:
    """Human-readable differences between two tree states (empty if equal)."""
    out = []
    for path in sorted(set(a) | set(b)):
        if path not in a:
            out.append(f"only in second: {path}")
        elif path not in b:
            out.append(f"only in first: {path}")
        elif a[path] != b[path]:
            out.append(f"differs: {path}: {a[path]} != {b[path]}")
    return out


def assert_same_tree(a: dict[str, Entry], b: dict[str, Entry]) -> None:
    problems = tree_diff(a, b)
    assert not problems, "\n".join(problems[:40])
