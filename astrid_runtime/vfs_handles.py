"""One plugin's VFS handles: small integers (`rep`) backed by fds, in a table the
ABI layer (abi/vfs.py) wraps in component resources. Reps are never reused, so a
stale one reads `closed`, an invented one `not-found`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field

from astrid_runtime.errors import Refusal
from astrid_runtime.vfs_rules import RootGrant


@dataclass
class DirHandle:
    fd: int
    root: RootGrant
    path: str

    def label(self, rel: str) -> str:
        joined = f"{self.path}/{rel}" if self.path and rel else (self.path or rel)
        return f"{self.root.name}:{joined or '.'}"


@dataclass
class FileHandle:
    fd: int
    root: RootGrant
    path: str
    readable: bool
    writable: bool


Handle = DirHandle | FileHandle


@dataclass
class HandleTable:
    """One plugin's open handles: rep -> handle. Thread-safe; reps are never reused.

    A rep below `next_rep` that is not in the table was closed (`closed`);
    one at or above it never existed (`not-found`).
    """

    limit: int
    handles: dict[int, Handle] = field(default_factory=dict)
    next_rep: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def insert(self, handle: Handle) -> int:
        with self._lock:
            if len(self.handles) >= self.limit:
                os.close(handle.fd)
                raise Refusal("too-large", f"more than {self.limit} open vfs handles; "
                              "drop some first")
            rep = self.next_rep
            self.next_rep += 1
            self.handles[rep] = handle
            return rep

    def get(self, rep: int) -> Handle:
        with self._lock:
            handle = self.handles.get(rep)
            if handle is None:
                if 0 < rep < self.next_rep:
                    raise Refusal("closed", f"handle {rep} was closed")
                raise Refusal("not-found", f"no handle {rep}")
            return handle

    def close(self, rep: int) -> bool:
        """Close one handle; False if it was not open. Never raises."""
        with self._lock:
            handle = self.handles.pop(rep, None)
        if handle is None:
            return False
        close_quietly(handle.fd)
        return True

    def close_all(self) -> int:
        """Close every handle (the instance died or the plugin stopped); how many."""
        with self._lock:
            handles = list(self.handles.values())
            self.handles.clear()
        for handle in handles:
            close_quietly(handle.fd)
        return len(handles)

    def __len__(self) -> int:
        return len(self.handles)


def close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
