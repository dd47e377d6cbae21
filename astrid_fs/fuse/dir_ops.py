"""Directory requests of the FUSE adapter: OPENDIR, READDIR(PLUS),
RELEASEDIR, FSYNCDIR.

Mixed into `FuseOps` (ops.py), whose state it uses: the overlay, the inode
table, the kernel-cache policy, the shim's lookup table. Listings come by
inode in the shim's no_opendir mode (OPENDIR answers ENOSYS), else by a
handle of this adapter's; either way a listing is taken at offset 0 and
served from then on (by inode: kept by `KernelCache` at stable places, so
every reader goes on where it was; cache.py `Listing`). Entries are
resolved lazily, only as many as fit in the kernel's buffer; some are sent
by name only (name_only.py).
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pyfuse3

from astrid_fs.fuse.cache import KernelCache, Listing
from astrid_fs.fuse.lookup_table import ShimLookups
from astrid_fs.fuse.name_only import NameOnlyListings
from astrid_fs.fuse.replies import fuse_errors, name_only_entry
from astrid_fs.fuse.shim import FH_CACHE_DIR, FH_FLAG_MASK, FH_INODE, FH_KEEP_CACHE
from astrid_fs.overlay.inodes import InodeTable, Node
from astrid_fs.overlay.layers import StatLike
from astrid_fs.overlay.overlay import Overlay


class DirectoryOps:
    """The directory half of `FuseOps`."""

    ov: Overlay
    table: InodeTable
    cache: KernelCache
    cache_dirs: bool
    no_opendir: bool
    name_only: bool
    name_only_policy: NameOnlyListings
    lookups: ShimLookups | None
    _dirs: dict[int, tuple[Node, list[bytes] | None]]
    _next_dir_fh: int
    _count: Callable[[str], None]
    _entry: Callable[[Node, StatLike], pyfuse3.EntryAttributes]
    _fetch: Callable[[Callable[[], None] | None], Awaitable[None]]

    @fuse_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        self._count("opendir")
        node = self.table.get(inode)
        if self.no_opendir:
            # ENOSYS turns on the kernel's no_opendir mode (this one succeeds).
            raise pyfuse3.FUSEError(errno.ENOSYS)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self._dirs[fh] = (node, None)
        if not self.cache_dirs:
            return fh
        keep = self.cache.keep_listing(inode, self.ov.dir_signature(node))
        return fh | FH_CACHE_DIR | (FH_KEEP_CACHE if keep else 0)

    async def _take_listing(self, node: Node
                            ) -> tuple[list[bytes | None], dict[bytes, tuple[int, int]]]:
        """A directory's names at offset 0 in their places (None: a place
        held for a hidden lower name, cache.py `Listing`), and those to send
        by name only."""
        await self._fetch(self.ov.fetch_for(node))
        if not self.name_only:
            return [b".", b"..", *self.ov.list_dir_placed(node)], {}
        names, typed = self.ov.list_dir_typed(node)
        if not self.name_only_policy.listing(node.ino, typed, len(typed)):
            typed = {}
        elif typed:
            self._count("listing_name_only")
        return [b".", b"..", *names], typed

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        self._count("readdir")
        listing: Listing | None = None
        if fh & FH_INODE:
            node = self.table.get(fh ^ FH_INODE)
            listing = self.cache.listing(node.ino) if start_id else None
            if listing is None:
                listing = self.cache.put_listing(node.ino, *await self._take_listing(node))
            entries: Iterable[tuple[int, bytes]] = listing.entries(start_id)
            name_only = listing.name_only
        else:
            node, names = self._dirs[fh & ~FH_FLAG_MASK]
            if names is None or start_id == 0:
                names = [n for n in (await self._take_listing(node))[0] if n is not None]
                self._dirs[fh & ~FH_FLAG_MASK] = (node, names)
            entries = enumerate(names[start_id:], start_id)
            name_only = {}  # (listings by handle are never name-only)
        self.cache.listed(node.ino)  # (after the last await: the kernel may cache these)
        # Lazily: resolve only what fits in the kernel's buffer; count a
        # lookup for each entry the kernel accepted (none for a name-only
        # entry: the kernel makes no inode of it). Lower files listed in
        # full are named to the shim, which then reads them (lookup_table.py).
        lower_files: list[tuple[int, bytes]] | None = [] if self.lookups is not None else None
        for index, name, child, st in self.ov.children(node.ino, entries, name_only):
            if child is None or st is None:
                ino, mode = name_only[name]
                if not pyfuse3.readdir_reply(token, name, name_only_entry(ino, mode),
                                             _next(listing, index)):
                    break
                continue
            dot = name == b"." or name == b".."
            if not pyfuse3.readdir_reply(token, name, self._entry(child, st),
                                         _next(listing, index)):
                if not dot:
                    self.table.forget(child.ino, 0)
                break
            if not dot:
                self.table.add_lookup(child)
                if lower_files is not None and not child.in_upper and child.lower \
                        and st.st_nlink == 1 and stat.S_ISREG(st.st_mode):
                    lower_files.append((child.ino, child.lower))
        if self.lookups is not None and lower_files:
            self.lookups.files_listed(lower_files)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh & ~FH_FLAG_MASK, None)

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        if fh & FH_INODE:
            node = self.table.get(fh ^ FH_INODE)
        else:
            node, _ = self._dirs[fh & ~FH_FLAG_MASK]
        self.ov.fsync_dir(node)


def _next(listing: Listing | None, index: int) -> int:
    """The offset sent with entry `index`: a kept listing's (stable places),
    else the next index (a handle's own listing)."""
    return index + 1 if listing is None else listing.next_offset(index)
