"""Several read-only lower layers stacked into one (overlayfs's
`lowerdir=A:B:C`, A on top).

What it knows: each lower layer may itself be an overlay upper (a session's
upper stacked beneath another session): a whiteout (0/0 character device,
or an empty file with the `*.overlay.whiteout` xattr) hides the same name
in every layer beneath it; an opaque directory hides the directories of the
same name beneath it; a directory merges with the directories of the same
name beneath it; a non-directory hides everything beneath it.

What it does not: follow redirects inside lower layers (a renamed directory
in a stacked upper shows as the directory it was renamed to, with the
contents its upper holds), or cache anything: the layers may be edited by
their owner while mounted, so every call reads the disk.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from astrid_fs.overlay.rules import Entry, Kind, merged_names, visible_layers
from astrid_fs.overlay.whiteout import OverlayXattrs, get_xattr, is_whiteout_stat

_XATTR_WHITEOUTS = ("trusted.overlay.whiteout", "user.overlay.whiteout")


@dataclass(frozen=True)
class Visible:
    """One layer's entry that shows at a path: layer index and its stat."""

    layer: int
    path: bytes
    st: os.stat_result
    rel: bytes = b""  # the path inside that layer (differs after a redirect)


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _lstat(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


class LowerStack:
    """Read-only view of `roots` (absolute, bytes, top first) as one tree."""

    def __init__(self, roots: tuple[bytes, ...], names: OverlayXattrs) -> None:
        if not roots:
            raise ValueError("a lower stack needs at least one layer")
        self.roots = roots
        self.xattrs = names

    def _is_whiteout(self, path: bytes, st: os.stat_result) -> bool:
        if is_whiteout_stat(st):
            return True
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            return any(get_xattr(path, n) is not None for n in _XATTR_WHITEOUTS)
        return False

    def _opaque(self, path: bytes) -> bool:
        return get_xattr(path, self.xattrs.opaque) == b"y"

    def visible(self, rel: bytes) -> list[Visible]:
        """The layer entries that show at `rel`, top first: one for a
        non-directory, every merged layer for a directory; [] if none."""
        if not rel:
            roots: list[Visible] = []
            for i, root in enumerate(self.roots):
                st = _lstat(root)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    roots.append(Visible(i, root, st, b""))
            return roots
        parent, _, name = rel.rpartition(b"/")
        above = self.visible(parent)
        if not above or not stat.S_ISDIR(above[0].st.st_mode):
            return []
        # Where to look, layer by layer: beside the parent's merged dirs,
        # until a redirect says where the layers beneath hold this dir.
        todo = [(v.layer, _join(v.rel, name)) for v in above]
        found: list[tuple[int, bytes, bytes, os.stat_result | None]] = []
        facts: list[Entry] = []
        while todo:
            layer, crel = todo.pop(0)
            path = self.roots[layer] + b"/" + crel
            st = _lstat(path)
            found.append((layer, crel, path, st))
            facts.append(self._fact(path, st))
            if facts[-1].kind in (Kind.WHITEOUT, Kind.OTHER):
                break  # nothing beneath can show: no need to look
            if facts[-1].kind is Kind.DIR and not facts[-1].opaque:
                redirect = get_xattr(path, self.xattrs.redirect)
                if redirect is not None:
                    todo = self._redirected(redirect, layer, crel, above)
        return [Visible(found[k][0], found[k][2], st, found[k][1])
                for k in visible_layers(facts) if (st := found[k][3]) is not None]

    def _redirected(self, redirect: bytes, layer: int, crel: bytes,
                    above: list[Visible]) -> list[tuple[int, bytes]]:
        """The lookups beneath `layer` for a directory redirected there."""
        if redirect.startswith(b"/"):
            target = redirect.strip(b"/")
            return [(j, target) for j in range(layer + 1, len(self.roots))]
        return [(v.layer, _join(v.rel, redirect)) for v in above if v.layer > layer]

    def _fact(self, path: bytes, st: os.stat_result | None) -> Entry:
        if st is None:
            return Entry(Kind.MISSING)
        if self._is_whiteout(path, st):
            return Entry(Kind.WHITEOUT)
        if stat.S_ISDIR(st.st_mode):
            return Entry(Kind.DIR, opaque=self._opaque(path))
        return Entry(Kind.OTHER)

    def stat(self, rel: bytes) -> os.stat_result | None:
        seen = self.visible(rel)
        return seen[0].st if seen else None

    def path(self, rel: bytes) -> bytes:
        """The real path of the entry that shows at `rel` (the top layer's
        path if nothing does, so that callers get ENOENT from the syscall)."""
        seen = self.visible(rel)
        return seen[0].path if seen else (self.roots[0] + b"/" + rel if rel else self.roots[0])

    def names(self, rel: bytes) -> list[bytes]:
        """Names in the merged directory `rel` (empty if it is not one)."""
        seen = self.visible(rel)
        if not seen or not stat.S_ISDIR(seen[0].st.st_mode):
            return []
        listings: list[dict[bytes, Kind]] = []
        for v in seen:
            try:
                with os.scandir(v.path) as it:
                    entries = [(os.fsencode(e.name), e.stat(follow_symlinks=False)) for e in it]
            except (FileNotFoundError, NotADirectoryError):
                continue
            listings.append({name: Kind.WHITEOUT if self._is_whiteout(v.path + b"/" + name, st)
                             else Kind.OTHER for name, st in entries})
        return merged_names(listings)
