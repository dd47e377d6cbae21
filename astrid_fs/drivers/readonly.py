"""A wrapper that refuses every write-back call with `ReadOnly` (EROFS).

A mount entry with `read_only = true` gets one: the session may still write
under that path (writes land in the upper layer like any other), but commit
cannot push them to the source.
"""

from __future__ import annotations

from pathlib import Path

from astrid_fs.drivers.base import DelegatingDriver
from astrid_fs.drivers.errors import ReadOnly


class ReadOnlyDriver(DelegatingDriver):
    """Reads pass through; write-back raises ReadOnly naming the source."""

    def _refuse(self, what: str) -> ReadOnly:
        return ReadOnly(f"{self.source} is mounted read-only: cannot {what}")

    def put_file(self, rel: str, local_path: Path, mode: int, mtime_ns: int) -> str | None:
        raise self._refuse(f"write {rel}")

    def make_dir(self, rel: str, mode: int) -> None:
        raise self._refuse(f"create directory {rel}")

    def make_symlink(self, rel: str, target: str) -> None:
        raise self._refuse(f"create symlink {rel}")

    def set_attrs(self, rel: str, mode: int | None, mtime_ns: int | None) -> None:
        raise self._refuse(f"change attributes of {rel}")

    def delete(self, rel: str) -> None:
        raise self._refuse(f"delete {rel}")

    def delete_tree(self, rel: str) -> None:
        raise self._refuse(f"delete {rel}")

    def rename(self, old: str, new: str) -> None:
        raise self._refuse(f"rename {old}")
