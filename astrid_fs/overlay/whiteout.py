"""The overlayfs on-disk format of an upper layer: the one module that knows it.

Whiteouts are 0/0 character devices (or, without CAP_MKNOD, empty files with a
`user.overlay.whiteout` xattr that only astrid-fs reads); opaque dirs and
directory redirects are `NS.overlay.*` xattrs; the base fingerprint of a
copied-up entry is `NS.overlay.astrid.origin`. See docs/design/upper-format.md.
Pure functions over paths and file descriptors: no FUSE, no trio.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from dataclasses import dataclass
from typing import Literal

XattrNs = Literal["trusted", "user"]

UPPER_ONLY_INO_TAG = 1 << 62
_HIDDEN_SECURITY = frozenset({"security.capability", "security.selinux",
                              "system.posix_acl_access", "system.posix_acl_default"})


def default_xattr_ns() -> XattrNs:
    """`trusted` for root (kernel overlayfs default), `user` otherwise."""
    return "trusted" if os.geteuid() == 0 else "user"


@dataclass(frozen=True)
class OverlayXattrs:
    """The names of the overlay's private xattrs in one namespace."""

    ns: XattrNs

    @property
    def opaque(self) -> str:
        return f"{self.ns}.overlay.opaque"

    @property
    def redirect(self) -> str:
        return f"{self.ns}.overlay.redirect"

    @property
    def origin(self) -> str:
        # Under the overlay prefix, so kernel overlayfs hides it too.
        return f"{self.ns}.overlay.astrid.origin"

    @property
    def xattr_whiteout(self) -> str:
        return "user.overlay.whiteout"

    def is_private(self, name: str) -> bool:
        """True for xattrs that never show through the mount: the overlay's
        own; file capabilities, SELinux labels and POSIX ACLs (a session
        grants no privilege, permissions are the mode bits, and the kernel
        asks for these on every write and `ls -l`)."""
        return name.startswith((f"{self.ns}.overlay.", f"{self.ns}.astrid.",
                                "user.overlay.")) or name in _HIDDEN_SECURITY


_json_str = json.encoder.encode_basestring_ascii  # (what json.dumps uses)


@dataclass(frozen=True)
class Origin:
    """Fingerprint of a lower entry at copy-up time (what a change is based on)."""

    path: str
    kind: str  # "file" | "dir" | "symlink" | "other"
    ino: int
    dev: int
    size: int
    mtime_ns: int
    mode: int
    blake3: str | None = None

    def encode(self) -> bytes:
        # The bytes of json.dumps(fields, sort_keys=True, separators=(",", ":")),
        # formatted by hand: 2 µs against 12 for json.dumps, once per copy-up.
        # Strings go through json's own escaping (non-ASCII and lone surrogates
        # as \uXXXX, as json.dumps does); the rest are ints.
        b3 = "null" if self.blake3 is None else _json_str(self.blake3)
        return (f'{{"blake3":{b3},"dev":{int(self.dev)},"ino":{int(self.ino)},'
                f'"kind":{_json_str(self.kind)},"mode":{int(self.mode)},'
                f'"mtime_ns":{int(self.mtime_ns)},"path":{_json_str(self.path)},'
                f'"size":{int(self.size)}}}').encode()

    @classmethod
    def decode(cls, raw: bytes) -> Origin:
        fields = json.loads(raw)
        return cls(**fields)

    @classmethod
    def of_stat(cls, path: str, st: os.stat_result, blake3: str | None = None) -> Origin:
        return cls(
            path=path,
            kind=kind_of_mode(st.st_mode),
            ino=st.st_ino,
            dev=st.st_dev,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            mode=st.st_mode,
            blake3=blake3,
        )


def kind_of_mode(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def is_whiteout_stat(st: os.stat_result) -> bool:
    """A kernel-format whiteout: a character device with rdev 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_whiteout(path: str | bytes, st: os.stat_result | None = None) -> bool:
    """True if the upper entry at `path` is a whiteout (either format)."""
    if st is None:
        st = os.lstat(path)
    if is_whiteout_stat(st):
        return True
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        try:
            os.getxattr(path, "user.overlay.whiteout", follow_symlinks=False)
        except OSError:
            return False
        return True
    return False


def make_whiteout(path: str | bytes) -> None:
    """Create a whiteout at `path` (which must not exist)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    except PermissionError:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o000)
        os.close(fd)
        os.setxattr(path, "user.overlay.whiteout", b"y", follow_symlinks=False)


class Whiteouts:
    """Whiteouts made as hard links of one whiteout kept in the work dir
    (`WORK/whiteout`), as overlayfs makes its own (fs/overlayfs/dir.c,
    `ovl_whiteout`): a link is ~30 µs here where a new inode was ~700 µs
    (this project's VMs' ext4 has no journal and scans recently deleted
    inodes at every allocation, docs/benchmarks.md), so `rm -rf` of a
    project directory was a whiteout inode per file. A whiteout is one by
    what it is (a 0/0 character device), not by its inode, so sharing one
    changes nothing that reads the upper; kernel overlayfs reads them alike.
    When the shared one is full (EMLINK) or gone it is made anew (rename
    over: never a moment without one); where no device can be made (not
    root) each whiteout is `make_whiteout`'s own."""

    NAME = b"whiteout"

    def __init__(self, work_dir: bytes) -> None:
        self._work = work_dir
        self._shared = work_dir + b"/" + self.NAME
        self._linkable: bool | None = None  # None: the shared one not checked yet

    def make(self, path: bytes) -> None:
        """A whiteout at `path` (which must not exist)."""
        if self._linkable is None:
            self._linkable = self._check()
        if self._linkable:
            try:
                os.link(self._shared, path)
                return
            except OSError as e:
                if e.errno not in (errno.EMLINK, errno.ENOENT):
                    raise
                # full, or gone (or `path`'s directory is: then the retry says so)
                if not self._renew():
                    self._linkable = False
                    return make_whiteout(path)
            os.link(self._shared, path)
            return
        make_whiteout(path)

    def _check(self) -> bool:
        """Whether the shared whiteout is one (made now if missing)."""
        try:
            if is_whiteout_stat(os.lstat(self._shared)):
                return True
        except FileNotFoundError:
            pass
        return self._renew()

    def _renew(self) -> bool:
        """Put a fresh whiteout at the shared name; False where none can be
        made (mknod refused)."""
        tmp = b"%s/.whiteout-%d" % (self._work, os.getpid())
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.mknod(tmp, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        except PermissionError:
            return False
        os.rename(tmp, self._shared)
        return True


def get_xattr(path: str | bytes, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            return None
        raise


def is_opaque(path: str | bytes, names: OverlayXattrs) -> bool:
    return get_xattr(path, names.opaque) == b"y"


def set_opaque(path: str | bytes, names: OverlayXattrs) -> None:
    os.setxattr(path, names.opaque, b"y", follow_symlinks=False)


def get_redirect(path: str | bytes, names: OverlayXattrs) -> str | None:
    raw = get_xattr(path, names.redirect)
    return None if raw is None else os.fsdecode(raw)


def set_redirect(path: str | bytes, names: OverlayXattrs, lower_path: str) -> None:
    """Mark the upper dir at `path` as the renamed lower dir `lower_path` ("/a/b")."""
    os.setxattr(path, names.redirect, os.fsencode(lower_path), follow_symlinks=False)


def get_origin(path: str | bytes, names: OverlayXattrs) -> Origin | None:
    raw = get_xattr(path, names.origin)
    if raw is None:
        return None
    try:
        return Origin.decode(raw)
    except (ValueError, TypeError):
        return None


def set_origin(path: str | bytes, names: OverlayXattrs, origin: Origin) -> None:
    os.setxattr(path, names.origin, origin.encode(), follow_symlinks=False)
