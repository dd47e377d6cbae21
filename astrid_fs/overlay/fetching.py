"""Remote lower trees: which tree shows a node, and what must be fetched
before the overlay can serve it. The fetches are returned as blocking jobs
for the caller (the FUSE adapter) to run in a worker thread, so the
overlay's own operations never wait on the network."""

from __future__ import annotations

from collections.abc import Callable

from astrid_fs.overlay.inodes import Node
from astrid_fs.overlay.layers import Layers, RemoteTree, join


class RemoteFetches:
    """Mixed into `OverlayCore`: needs only its `layers`."""

    layers: Layers

    def remote_of_lower(self, lower_rel: bytes) -> tuple[RemoteTree, bytes] | None:
        return self.layers.remote_for(lower_rel) if self.layers.remotes else None

    def remote_of(self, node: Node) -> tuple[RemoteTree, bytes] | None:
        """The remote tree showing `node` (not copied up), if any."""
        if node.in_upper or node.lower is None or not self.layers.remotes:
            return None
        return self.layers.remote_for(node.lower)

    def fetch_lower(self, lower_rel: bytes | None, data: bool = False
                    ) -> Callable[[], None] | None:
        """A blocking job that caches the remote metadata (or, with `data`,
        the content) of a lower path, for the caller to run in a worker
        thread; None when nothing needs fetching (local, or cached)."""
        if lower_rel is None or not self.layers.remotes:
            return None
        hit = self.layers.remote_for(lower_rel)
        if hit is None or hit[0].is_warm(hit[1], data):
            return None
        tree, rel = hit
        return lambda: tree.warm(rel, data)

    def fetch_for(self, node: Node, data: bool = False) -> Callable[[], None] | None:
        """What to fetch before serving `node` (its data, with `data`)."""
        if node.in_upper and not node.is_dir:
            return None
        return self.fetch_lower(node.lower, data and not node.in_upper)

    def fetch_for_lookup(self, parent: Node, name: bytes) -> Callable[[], None] | None:
        """What to fetch before a LOOKUP of `name` in `parent`: the entry's
        stat only (RemoteTree.warm_lookup says when that lists the parent)."""
        if parent.lower is None or not self.layers.remotes:
            return None
        hit = self.layers.remote_for(join(parent.lower, name))
        if hit is None or hit[0].is_known(hit[1]):
            return None
        tree, rel = hit
        return lambda: tree.warm_lookup(rel)

    def fetch_for_child(self, parent: Node, name: bytes, data: bool = False
                        ) -> Callable[[], None] | None:
        """What to fetch before changing `name` in `parent` (rename, rmdir):
        the parent's listing and the entry (a directory's listing; with
        `data`, a file's content)."""
        if parent.lower is None or not self.layers.remotes:
            return None
        jobs = [j for j in (self.fetch_lower(parent.lower),
                            self.fetch_lower(join(parent.lower, name), data))
                if j is not None]
        if not jobs:
            return None

        def fetch_all() -> None:
            for job in jobs:
                job()

        return fetch_all
