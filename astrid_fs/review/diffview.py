"""How a list of changes is shown: porcelain lines, unified patches, a stat
summary, JSON. Reads file contents for patches and stats; decides nothing
about what changed (that is `changes.py`).

Porcelain line: two columns then the path, as `git status --porcelain`:
column 1 is the status letter (A added, M modified, D deleted, R renamed,
T type changed, L symlink target changed, P mode changed, X xattrs changed,
O owner changed, U only times changed), column 2 is `!` for a conflict.
Renames read `R  old -> new`.
"""

from __future__ import annotations

import difflib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from astrid_fs.review.changes import Change

_BINARY_PROBE = 8192
MAX_PATCH_BYTES = 16 << 20
_MAX_PATCH_BYTES = MAX_PATCH_BYTES
# How the old side of a change under a mounted source is read (content, mode),
# given its session path; None: everything is in the local lower dir.
RemoteRead = Callable[[str], tuple[bytes | None, int | None]]


def porcelain_line(change: Change) -> str:
    mark = "!" if change.conflict else " "
    path = change.path + ("/" if change.kind == "dir" else "")
    if change.status == "R" and change.lower_path is not None:
        path = f"{change.lower_path} -> {path}"
    return f"{change.status}{mark} {path}"


def porcelain(changes: list[Change]) -> str:
    lines = [porcelain_line(c) for c in changes]
    lines += [f"!! {c.path}: {c.conflict}" for c in changes if c.conflict]
    return "".join(line + "\n" for line in lines)


def as_json(changes: list[Change]) -> str:
    """A JSON array, one object per change (stable keys for scripts)."""
    items = []
    for c in changes:
        items.append({
            "path": c.path,
            "status": c.status,
            "kind": c.kind,
            "old_kind": c.old_kind,
            "from": c.lower_path if c.status == "R" else None,
            "lower_path": c.lower_path,
            "flags": list(c.flags),
            "conflict": c.conflict,
            "base": _base_json(c),
            "hardlink_of": c.link_to,
        })
    return json.dumps(items, indent=2) + "\n"


def _base_json(c: Change) -> dict[str, object] | None:
    """What the change is based on: the copy-up's fingerprint, else the
    session's base index row (`"from": "index"`; kind "absent" when the
    project had nothing there), else null (unknown)."""
    if c.origin is not None:
        return {"from": "copy-up", "kind": c.origin.kind, "ino": c.origin.ino,
                "size": c.origin.size, "mtime_ns": c.origin.mtime_ns,
                # a copy-up from a mounted source records its ETag there
                "blake3": None if c.remote else c.origin.blake3,
                "etag": c.origin.blake3 if c.remote else None}
    b = c.index_base
    if b is None:
        return None
    return {"from": "index", "kind": b.kind, "ino": b.ino, "size": b.size,
            "mtime_ns": b.mtime_ns, "blake3": None, "etag": b.etag}


def _read(path: str | None) -> bytes | None:
    """The bytes of a regular file or a symlink's target; None for no file."""
    if path is None:
        return None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return os.fsencode(os.readlink(path)) + b"\n"
    if not stat.S_ISREG(st.st_mode):
        return None
    with open(path, "rb") as f:
        return f.read(_MAX_PATCH_BYTES + 1)


def _is_binary(content: bytes | None) -> bool:
    if content is None:
        return False
    if len(content) > _MAX_PATCH_BYTES or b"\0" in content[:_BINARY_PROBE]:
        return True
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@dataclass(frozen=True)
class _Sides:
    old: bytes | None
    new: bytes | None
    old_mode: int | None
    new_mode: int | None


def _sides(change: Change, upper: str, lower: str, remote: RemoteRead | None = None) -> _Sides:
    new_path = None if change.status == "D" else os.path.join(upper, change.path)
    new_mode = None if new_path is None else os.lstat(new_path).st_mode
    if change.remote and remote is not None:
        old, old_mode = (None, None) if change.lower_path is None else remote(change.lower_path)
        return _Sides(old, _read(new_path), old_mode, new_mode)
    old_path = None if change.lower_path is None else os.path.join(lower, change.lower_path)
    old_mode = None
    if old_path is not None and os.path.lexists(old_path):
        old_mode = os.lstat(old_path).st_mode
    return _Sides(_read(old_path), _read(new_path), old_mode, new_mode)


def _git_mode(mode: int) -> str:
    """The mode as git writes it in a patch (it knows no other)."""
    if stat.S_ISLNK(mode):
        return "120000"
    if stat.S_ISDIR(mode):
        return "040000"
    return "100755" if mode & 0o111 else "100644"


def _lines(content: bytes | None) -> list[str]:
    if content is None:
        return []
    return content.decode("utf-8").splitlines(keepends=True)


def patch_of(change: Change, upper: str, lower: str, remote: RemoteRead | None = None) -> str:
    """A patch for one change in git's format (`diff --git`, so `git apply`,
    delta and review tools read it); binary files are named, not dumped. A
    conflict is a `#` line before it (text before a header is not patch)."""
    a = change.lower_path if change.lower_path is not None else change.path
    out = [f"# conflict: {change.path}: {change.conflict}\n"] if change.conflict else []
    out.append(f"diff --git a/{a} b/{change.path}\n")
    sides = _sides(change, upper, lower, remote)
    if change.status == "R":
        if sides.old == sides.new and sides.old_mode == sides.new_mode:
            out.append("similarity index 100%\n")
        out.append(f"rename from {a}\nrename to {change.path}\n")
    if sides.old_mode is not None and sides.new_mode is not None:
        if _git_mode(sides.old_mode) != _git_mode(sides.new_mode):
            out.append(f"old mode {_git_mode(sides.old_mode)}\n"
                       f"new mode {_git_mode(sides.new_mode)}\n")
    elif sides.new_mode is not None:
        out.append(f"new file mode {_git_mode(sides.new_mode)}\n")
    elif sides.old_mode is not None:
        out.append(f"deleted file mode {_git_mode(sides.old_mode)}\n")
    if change.kind == "dir" or (change.status == "D" and change.kind == "dir"):
        return "".join(out)
    if sides.old == sides.new:
        return "".join(out)
    if _is_binary(sides.old) or _is_binary(sides.new):
        out.append(f"Binary files a/{a} and b/{change.path} differ\n")
        return "".join(out)
    old_name = "/dev/null" if sides.old is None else f"a/{a}"
    new_name = "/dev/null" if sides.new is None else f"b/{change.path}"
    for line in difflib.unified_diff(_lines(sides.old), _lines(sides.new), old_name, new_name):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def patch(changes: list[Change], upper: str, lower: str,
          remote: RemoteRead | None = None) -> str:
    return "".join(patch_of(c, upper, lower, remote) for c in changes)


def stat_counts(change: Change, upper: str, lower: str,
                remote: RemoteRead | None = None) -> tuple[int, int] | None:
    """(insertions, deletions) of a text change; None for binary files."""
    sides = _sides(change, upper, lower, remote)
    if _is_binary(sides.old) or _is_binary(sides.new):
        return None
    plus = minus = 0
    for line in difflib.unified_diff(_lines(sides.old), _lines(sides.new), n=0):
        if line.startswith("+") and not line.startswith("+++"):
            plus += 1
        elif line.startswith("-") and not line.startswith("---"):
            minus += 1
    return plus, minus


def stat_view(changes: list[Change], upper: str, lower: str, width: int = 40,
              remote: RemoteRead | None = None) -> str:
    """`git diff --stat`-like summary."""
    rows: list[tuple[str, str]] = []
    total_plus = total_minus = 0
    for c in changes:
        name = c.path if c.status != "R" else f"{c.lower_path} => {c.path}"
        if c.kind == "dir":
            rows.append((name + "/", c.status))
            continue
        counts = stat_counts(c, upper, lower, remote)
        if counts is None:
            rows.append((name, "Bin"))
            continue
        plus, minus = counts
        total_plus += plus
        total_minus += minus
        bar = "+" * min(plus, width) + "-" * min(minus, width)
        rows.append((name, f"{plus + minus} {bar}".rstrip()))
    pad = max((len(n) for n, _ in rows), default=0)
    out = [f" {n.ljust(pad)} | {r}\n" for n, r in rows]
    out.append(f" {len(changes)} changes, {total_plus} insertions(+), "
               f"{total_minus} deletions(-)\n")
    return "".join(out)
