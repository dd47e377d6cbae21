"""Planning a commit: the selected changes become one journal record
(what to stage, vacate, place, set, clean up), following the rules in
commit.py's docstring and docs/design/journal.md.
"""

from __future__ import annotations

import os
import stat
import time

from astrid_fs.errors import SessionError
from astrid_fs.overlay.layers import COMMIT_STAGING_PREFIX
from astrid_fs.overlay.whiteout import is_opaque
from astrid_fs.review.changes import Change, user_xattrs
from astrid_fs.review.changeset import _depth, _parent, open_lowers
from astrid_fs.review.journal import Cleanup, DirMeta, Place, Record, Stage, Vacate
from astrid_fs.review.remote_commit import mount_points
from astrid_fs.review.selection import is_under
from astrid_fs.session import Session


class _Planner:
    """Builds one journal record from the selected changes."""

    def __init__(self, session: Session, everything: list[Change], chosen: list[Change],
                 txid: str) -> None:
        self.session = session
        self.upper = str(session.upper)
        self.chosen = chosen
        self.chosen_paths = {c.path for c in chosen if c.status != "D"}
        self.txid = txid
        self.stage: list[Stage] = []
        self.vacate: list[Vacate] = []
        self.place: list[Place] = []
        self.dirmeta: list[DirMeta] = []
        self.cleanup: list[Cleanup] = []
        self.slots = 0
        state = session.mount_state()
        mounted = state is not None and state.alive()
        # Hard-link staging is safe only while nothing can write the upper in
        # place (no mount) and only within one filesystem.
        self.link_ok = not mounted and (
            os.stat(session.upper).st_dev == os.stat(session.lower).st_dev)
        lowers = open_lowers(session)
        self.points: list[str] = []
        if lowers is not None:
            self.points = mount_points(lowers)
            lowers.close()
        picked = {id(c) for c in chosen}
        # Opaque dirs still hiding a lower entry after this commit keep their
        # upper children (removing them would hide the committed copies).
        hidden_left = {_parent(c.path) for c in everything
                       if c.status == "D" and not c.whiteout and id(c) not in picked}
        self.kept_opaque = {d for d in hidden_left
                            if is_opaque(os.path.join(self.upper, d), session.xattrs)}

    def slot(self, prefix: str) -> str:
        self.slots += 1
        return f"{prefix}{self.slots}"

    def under_kept_opaque(self, path: str) -> bool:
        parts = path.split("/")
        return any("/".join(parts[:i]) in self.kept_opaque for i in range(1, len(parts) + 1))

    def clean_entry(self, path: str) -> bool:
        """Plan removing upper `path` after the commit; False if it stays."""
        if self.under_kept_opaque(path):
            return False
        st = os.lstat(os.path.join(self.upper, path))
        self.cleanup.append(Cleanup(path, False, st.st_ino, st.st_mtime_ns, st.st_size,
                                    st.st_mode))
        return True

    def clean_dir(self, path: str) -> None:
        if self.under_kept_opaque(path) and path not in self.kept_opaque:
            return
        names = self.session.xattrs
        strip = (names.redirect,) if path in self.kept_opaque else (names.redirect, names.opaque)
        remote = any(is_under(path, p) for p in self.points)
        self.cleanup.append(Cleanup(path, True, strip=strip, remote=remote))

    def add(self, c: Change) -> None:
        if any(is_under(c.path, p) for p in self.points):  # written back by a driver
            if c.kind == "dir" and c.status != "D":
                self.clean_dir(c.path)
            elif c.status != "D" or c.whiteout:
                self.clean_entry(c.path)
            if c.source_whiteout is not None:
                self.clean_entry(c.source_whiteout)
            return
        if c.status == "D":
            self.vacate.append(Vacate(c.lower_path or c.path, self.slot("v")))
            if c.whiteout:
                self.clean_entry(c.path)
            return
        if c.status in ("T", "R") and c.lower_path is not None:
            if c.status == "R" and c.kind == "dir" and not os.path.isdir(
                    self.session.lower / c.lower_path):
                raise SessionError(
                    f"cannot commit {c.path}/: it renames {c.lower_path}, which is no longer "
                    "in the project (not even --force can rename what is gone); discard it "
                    "or roll back to another snapshot; nothing was changed")
            slot = self.slot("v")
            self.vacate.append(Vacate(c.lower_path, slot))
            # A renamed dir, or a renamed file that changed in nothing else,
            # is renamed in the lower: it keeps its inode (and its children).
            if c.status == "R" and (c.kind == "dir" or not c.flags):
                self.place.append(Place("move", c.path, slot))
                if c.kind != "dir":
                    self.clean_entry(c.path)
                    if c.source_whiteout is not None:
                        self.clean_entry(c.source_whiteout)
                    return
        if c.source_whiteout is not None:
            self.clean_entry(c.source_whiteout)
        if c.kind == "dir":
            if c.status in ("A", "T"):
                self.place.append(Place("mkdir", c.path))
            self.dirmeta.append(self.dir_meta(c.path))
            self.clean_dir(c.path)
            return
        leaves = self.clean_entry(c.path)
        if c.link_to is not None and c.link_to in self.chosen_paths:
            self.place.append(Place("link", c.path, self.slot("l"), c.link_to))
        else:
            slot = self.slot("s")
            # Link only an inode the upper gives up entirely (one name, which
            # leaves): a remaining upper name would write through to the lower.
            link = (self.link_ok and leaves and c.kind == "file"
                    and os.lstat(os.path.join(self.upper, c.path)).st_nlink == 1)
            self.stage.append(Stage(c.path, slot, link))
            self.place.append(Place("put", c.path, slot))

    def check_same_fs(self) -> None:
        """Vacating is a rename into the staging dir: refuse, before anything
        is written, an entry on another filesystem mounted inside the lower."""
        dev = os.stat(self.session.lower).st_dev
        for v in self.vacate:
            try:
                st = os.lstat(self.session.lower / v.path)
            except FileNotFoundError:
                continue
            if st.st_dev != dev or os.path.ismount(self.session.lower / v.path):
                raise SessionError(
                    f"cannot commit the removal of {v.path}: it is on another filesystem "
                    f"than the lower {self.session.lower}; nothing was changed")

    def dir_meta(self, path: str) -> DirMeta:
        full = os.path.join(self.upper, path)
        st = os.lstat(full)
        xattrs = {k: v.hex() for k, v in user_xattrs(full, self.session.xattrs).items()}
        return DirMeta(path, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                       st.st_mtime_ns, xattrs)

    def record(self) -> Record:
        for c in self.chosen:
            self.add(c)
        cleaned = {x.path for x in self.cleanup if x.is_dir}
        ancestors: set[str] = set()
        for c in self.chosen:
            parent = _parent(c.path)
            while parent:
                ancestors.add(parent)
                parent = _parent(parent)
        for parent in sorted(ancestors - cleaned):
            if os.path.isdir(os.path.join(self.upper, parent)):
                self.clean_dir(parent)
        touched = {c.path for c in self.chosen} | {
            c.lower_path for c in self.chosen if c.lower_path is not None}
        self.check_same_fs()
        staging = str(self.session.lower / f"{COMMIT_STAGING_PREFIX.decode()}{self.txid}")
        return Record(
            txid=self.txid, state="prepared", staging=staging,
            stage=tuple(self.stage),
            vacate=tuple(sorted(self.vacate, key=lambda v: (-_depth(v.path), v.path))),
            place=tuple(sorted(self.place, key=lambda p: (p.op == "link", _depth(p.to), p.to))),
            dirmeta=tuple(sorted(self.dirmeta, key=lambda d: (-_depth(d.path), d.path))),
            cleanup=tuple(sorted(self.cleanup, key=lambda x: (-_depth(x.path), x.path))),
            paths=tuple(sorted(touched)),
        )


def plan(session: Session, everything: list[Change], chosen: list[Change]) -> Record:
    """The journal record that lands `chosen` (a selection of `everything`)."""
    txid = f"{time.time_ns():x}-{os.getpid()}"
    return _Planner(session, everything, chosen, txid).record()


def describe(rec: Record) -> str:
    """The plan of a record, one line per step (for --dry-run)."""
    lines = [f"remove {v.path}" for v in rec.vacate if not any(
        p.slot == v.slot for p in rec.place)]
    for p in rec.place:
        if p.op == "move":
            src = next(v.path for v in rec.vacate if v.slot == p.slot)
            lines.append(f"rename {src} -> {p.to}")
        elif p.op == "put":
            lines.append(f"write {p.to}")
        elif p.op == "mkdir":
            lines.append(f"mkdir {p.to}")
        else:
            lines.append(f"link {p.source} -> {p.to}")
    lines += [f"set metadata {d.path}/" for d in rec.dirmeta]
    return "".join(line + "\n" for line in lines)
