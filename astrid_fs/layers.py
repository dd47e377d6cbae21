"""Layer resolution: what one name in a merged directory is, and what a
merged directory lists. Plain functions over the two layer roots; no FUSE.

Rules (overlayfs's):
- An upper entry hides the lower one of the same name; an upper whiteout
  hides it and shows nothing.
- An upper directory merges with the lower directory of the same name
  unless it is opaque; a redirect names the lower directory it merges with
  instead (a renamed lower directory).
- A lower entry shows only where the parent merges with a lower directory.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from astrid_fs.whiteout import Origin, OverlayXattrs, is_whiteout_stat


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


@dataclass(frozen=True)
class Layers:
    """The two layer roots (absolute, bytes) and the overlay xattr names."""

    lower: bytes
    upper: bytes
    names: OverlayXattrs

    def upper_path(self, rel: bytes) -> bytes:
        return self.upper + b"/" + rel if rel else self.upper

    def lower_path(self, rel: bytes) -> bytes:
        return self.lower + b"/" + rel if rel else self.lower

    def is_whiteout(self, path: bytes, st: os.stat_result) -> bool:
        if is_whiteout_stat(st):
            return True
        if self.names.ns == "user" and stat.S_ISREG(st.st_mode) and st.st_size == 0:
            try:
                os.getxattr(path, self.names.xattr_whiteout, follow_symlinks=False)
            except OSError:
                return False
            return True
        return False


@dataclass(frozen=True)
class Resolved:
    """One visible entry of the merged tree.

    `st` is the stat of the layer that shows (upper if `in_upper`); `lower`
    is the lower path it is drawn from (files: only while not copied up;
    directories: the lower dir merged in, None if opaque or upper-only);
    `origin` is the copy-up fingerprint, if the upper entry has one.
    """

    st: os.stat_result
    in_upper: bool
    lower: bytes | None
    origin: Origin | None


def _xattr(path: bytes, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            return None
        raise


def _lstat(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def lower_dir_for(layers: Layers, upper_path: bytes, parent_lower: bytes | None,
                  name: bytes) -> bytes | None:
    """The lower directory an upper directory merges with, or None."""
    opaque = _xattr(upper_path, layers.names.opaque)
    if opaque == b"y":
        return None
    redirect = _xattr(upper_path, layers.names.redirect)
    if redirect is not None:
        if redirect.startswith(b"/"):
            target = redirect.strip(b"/")
        elif parent_lower is not None:
            target = join(parent_lower, redirect)
        else:
            return None
        st = _lstat(layers.lower_path(target))
        return target if st is not None and stat.S_ISDIR(st.st_mode) else None
    if parent_lower is None:
        return None
    candidate = join(parent_lower, name)
    st = _lstat(layers.lower_path(candidate))
    return candidate if st is not None and stat.S_ISDIR(st.st_mode) else None


def resolve_child(layers: Layers, parent_path: bytes, parent_in_upper: bool,
                  parent_lower: bytes | None, name: bytes) -> Resolved | None:
    """Resolve `name` in a merged directory; None if it is not visible."""
    if parent_in_upper:
        upath = layers.upper_path(join(parent_path, name))
        ust = _lstat(upath)
        if ust is not None:
            if layers.is_whiteout(upath, ust):
                return None
            raw_origin = _xattr(upath, layers.names.origin)
            origin = None
            if raw_origin is not None:
                try:
                    origin = Origin.decode(raw_origin)
                except (ValueError, TypeError):
                    origin = None
            lower = None
            if stat.S_ISDIR(ust.st_mode):
                lower = lower_dir_for(layers, upath, parent_lower, name)
            return Resolved(ust, True, lower, origin)
    if parent_lower is None:
        return None
    lrel = join(parent_lower, name)
    lst = _lstat(layers.lower_path(lrel))
    if lst is None:
        return None
    return Resolved(lst, False, lrel, None)


def lower_has(layers: Layers, parent_lower: bytes | None, name: bytes) -> bool:
    """True if the lower directory merged into a parent has an entry `name`."""
    if parent_lower is None:
        return False
    return _lstat(layers.lower_path(join(parent_lower, name))) is not None


def merged_names(layers: Layers, path: bytes, in_upper: bool,
                 lower: bytes | None) -> list[bytes]:
    """The names a merged directory lists (sorted: upper and lower mixed)."""
    names: set[bytes] = set()
    hidden: set[bytes] = set()
    if in_upper:
        upath = layers.upper_path(path)
        with os.scandir(upath) as it:
            for entry in it:
                name = os.fsencode(entry.name)
                st = entry.stat(follow_symlinks=False)
                if layers.is_whiteout(upath + b"/" + name, st):
                    hidden.add(name)
                else:
                    names.add(name)
    if lower is not None:
        try:
            with os.scandir(layers.lower_path(lower)) as it:
                for entry in it:
                    name = os.fsencode(entry.name)
                    if name not in hidden:
                        names.add(name)
        except (FileNotFoundError, NotADirectoryError):
            pass
    return sorted(names)


def upper_whiteouts(layers: Layers, path: bytes) -> list[bytes]:
    """Whiteout names inside the upper directory at `path`."""
    upath = layers.upper_path(path)
    out = []
    with os.scandir(upath) as it:
        for entry in it:
            st = entry.stat(follow_symlinks=False)
            name = os.fsencode(entry.name)
            if layers.is_whiteout(upath + b"/" + name, st):
                out.append(name)
    return out
