"""Hard links of the lower layer survive copy-up (overlayfs's `index=on`).

A lower file with several names (`a` and `b`, one inode) is one file in the
merged view too: a write through `a` shows through `b`. Copying up `a`
therefore also puts the copy in an index beside the work dir, named by the
lower inode (`INDEX/<dev>-<ino>`), and every other name of that lower inode
is linked to the index copy ("linked up") the first time it is resolved,
instead of showing the stale lower file.

The link count shown is the upper copy's (minus the index's own name) plus
the lower names not linked up yet; the index copy carries that pending
count in `NS.overlay.astrid.pending` (hidden like every overlay xattr).

An index entry counts while some upper name links to it or lower names
are pending; entries no upper name links to are pruned when the daemon
starts and after commit, discard or rollback rewrote the upper (the
remaining names then show the project's file). Removing a lower name
(unlink, rename over it) before any copy-up makes the index entry from the
lower file, so the other names' link count drops, as kernel overlayfs does.
Limits: a name of the lower
inode that the session never resolved is not in the upper, so a commit
lands the new content under the names the session saw (the project's link
is then broken, both names reported by diff).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from astrid_fs.overlay.whiteout import OverlayXattrs, get_xattr


class LinkIndex:
    """The index of copied-up lower hard links of one upper layer."""

    def __init__(self, index_dir: bytes, names: OverlayXattrs) -> None:
        self.dir = index_dir
        self._pending = f"{names.ns}.overlay.astrid.pending"

    @staticmethod
    def applies(lower_st: os.stat_result | object) -> bool:
        """Whether a lower entry is a hard-linked regular file."""
        mode = getattr(lower_st, "st_mode", 0)
        return stat.S_ISREG(mode) and getattr(lower_st, "st_nlink", 1) > 1

    def _path(self, dev: int, ino: int) -> bytes:
        return b"%s/%x-%x" % (self.dir, dev, ino)

    def live(self, dev: int, ino: int) -> bytes | None:
        """The index copy of lower inode (dev, ino), if it still stands for
        some name: an upper name links to it, or lower names are pending."""
        path = self._path(dev, ino)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return path if st.st_nlink > 1 or self.pending(path) > 0 else None

    def prune(self) -> None:
        """Drop entries no upper name links to. Called when the daemon starts
        and after the layers changed behind it (commit, discard, rollback
        rewrote the upper): what they left is the project's file again."""
        try:
            entries = os.scandir(self.dir)
        except FileNotFoundError:
            return
        with entries:
            for entry in entries:
                if entry.stat(follow_symlinks=False).st_nlink == 1:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def alias_removed(self, dev: int, ino: int, lower_nlink: int,
                      make_copy: Callable[[bytes], object]) -> None:
        """A lower name of (dev, ino) left the view (unlink, rename over it):
        one pending name fewer, so the others count right. Without an index
        entry yet, `make_copy(path)` makes one from the lower file first (as
        kernel overlayfs copies up for its link count)."""
        path = self.live(dev, ino)
        if path is None:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            path = self._path(dev, ino)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            make_copy(path)
            self._set_pending(path, lower_nlink - 1)
            return
        self._set_pending(path, max(0, self.pending(path) - 1))

    def add(self, upper_path: bytes, dev: int, ino: int, lower_nlink: int) -> None:
        """Index the fresh copy-up at `upper_path` of lower inode (dev, ino)."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        path = self._path(dev, ino)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: no upper name links to it
        os.link(upper_path, path)
        self._set_pending(path, lower_nlink - 1)

    def link_up(self, index_path: bytes, upper_path: bytes) -> None:
        """Give the index copy one more upper name (a lower alias resolved)."""
        os.link(index_path, upper_path)
        self._set_pending(index_path, max(0, self.pending(index_path) - 1))

    def pending(self, path: bytes) -> int:
        raw = get_xattr(path, self._pending)
        try:
            return int(raw or b"0")
        except ValueError:
            return 0

    def _set_pending(self, path: bytes, count: int) -> None:
        os.setxattr(path, self._pending, b"%d" % count, follow_symlinks=False)

    def shown_for_lower(self, lower_st: os.stat_result) -> int | None:
        """The link count to show for a lower name of an indexed file (its
        other names may have been removed or linked up); None if not indexed."""
        path = self.live(lower_st.st_dev, lower_st.st_ino)
        if path is None:
            return None
        return os.lstat(path).st_nlink - 1 + self.pending(path)

    def shown_nlink(self, upper_st: os.stat_result, dev: int, ino: int) -> int:
        """The link count the merged view shows for an indexed upper file."""
        path = self._path(dev, ino)
        try:
            if os.lstat(path).st_ino != upper_st.st_ino:
                return upper_st.st_nlink
        except FileNotFoundError:
            return upper_st.st_nlink
        return upper_st.st_nlink - 1 + self.pending(path)


@dataclass(frozen=True)
class Relinked:
    """An upper file's stat with the link count the merged view shows."""

    st: os.stat_result
    st_nlink: int

    @property
    def st_mode(self) -> int:
        return self.st.st_mode

    @property
    def st_ino(self) -> int:
        return self.st.st_ino

    @property
    def st_dev(self) -> int:
        return self.st.st_dev

    @property
    def st_uid(self) -> int:
        return self.st.st_uid

    @property
    def st_gid(self) -> int:
        return self.st.st_gid

    @property
    def st_rdev(self) -> int:
        return self.st.st_rdev

    @property
    def st_size(self) -> int:
        return self.st.st_size

    @property
    def st_blksize(self) -> int:
        return self.st.st_blksize

    @property
    def st_blocks(self) -> int:
        return self.st.st_blocks

    @property
    def st_atime_ns(self) -> int:
        return self.st.st_atime_ns

    @property
    def st_mtime_ns(self) -> int:
        return self.st.st_mtime_ns

    @property
    def st_ctime_ns(self) -> int:
        return self.st.st_ctime_ns


def relinked(st: os.stat_result, nlink: int) -> Relinked:
    return Relinked(st, nlink)
