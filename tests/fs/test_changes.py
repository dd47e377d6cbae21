"""Changes computed from the upper layer: one of each kind, written by
kernel overlayfs (the reference writer of our on-disk format), and by hand
with the whiteout helpers for what only astrid-fs writes (origin)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from astrid_fs.overlay.whiteout import Origin, make_whiteout, set_origin
from astrid_fs.review import diffview
from astrid_fs.review.changes import scan
from astrid_fs.review.commit import commit, session_changes
from astrid_fs.review.conflicts import check_conflicts
from astrid_fs.review.discard import discard
from astrid_fs.review.selection import select
from astrid_fs.session import Session
from tests.fs.kernel_overlay import OverlayFactory
from tests.fs.scenario import build_lower, edit_through

EXPECTED = {
    "M  bin.dat", "P  chmod.sh", "D  docs/sub/", "D  gone.txt", "L  link", "D  mv_me.txt",
    "A  newdir/", "A  newdir/hard.txt", "A  newdir/nested/", "A  newdir/nested/f.txt",
    "A  opq/fresh", "D  opq/keep", "R  old -> renamed/", "M  renamed/x.txt",
    "M  src/main.py", "A  src/moved.txt", "A  src/new.py", "U  touch.txt", "T  was_dir",
    "T  was_file/", "A  was_file/child", "X  xattr.txt",
}


def test_every_change_kind_from_kernel_overlay(session: Session, lower: Path,
                                               overlay: OverlayFactory) -> None:
    build_lower(lower)
    with overlay(session) as mnt:
        edit_through(mnt)
    changes = session_changes(session)
    assert set(diffview.porcelain(changes).splitlines()) == EXPECTED
    by_path = {c.path: c for c in changes}
    assert by_path["renamed"].lower_path == "old"
    assert by_path["renamed/x.txt"].lower_path == "old/x.txt"
    assert by_path["was_dir"].old_kind == "dir"
    assert by_path["newdir/nested/f.txt"].link_to == "newdir/hard.txt"
    assert all(c.conflict is None for c in changes)  # kernel writes no origin: base unknown


def test_patch_names_binary_files_and_shows_text_and_modes(
        session: Session, lower: Path, overlay: OverlayFactory) -> None:
    build_lower(lower)
    with overlay(session) as mnt:
        edit_through(mnt)
    changes = session_changes(session)
    text = diffview.patch(changes, str(session.upper), str(lower))
    assert "Binary files a/bin.dat and b/bin.dat differ" in text
    assert "\x00" not in text
    assert "-print('hello')\n+print('hello, world')\n" in text
    assert "old mode 100644\nnew mode 100755" in text
    assert "rename from old\nrename to renamed" in text
    assert "-src/main.py\n+src/util.py" in text  # symlink target
    stat = diffview.stat_view(changes, str(session.upper), str(lower))
    assert " bin.dat " in stat and "| Bin" in stat
    assert stat.rstrip().endswith("deletions(-)")
    items = json.loads(diffview.as_json(changes))
    assert {i["path"] for i in items} == {c.path for c in changes}
    assert next(i for i in items if i["path"] == "renamed")["from"] == "old"


def _origin_of(lower: Path, rel: str) -> Origin:
    return Origin.of_stat(rel, os.lstat(lower / rel))


def test_origin_makes_file_rename_and_detects_conflicts(session: Session, lower: Path) -> None:
    (lower / "a.txt").write_text("a\n")
    (lower / "b.txt").write_text("b\n")
    (lower / "c.txt").write_text("c\n")
    up = session.upper
    names = session.xattrs
    # a.txt renamed to z.txt (astrid-fs records the origin at copy-up)
    (up / "z.txt").write_text("a\n")
    set_origin(str(up / "z.txt"), names, _origin_of(lower, "a.txt"))
    make_whiteout(str(up / "a.txt"))
    # b.txt modified in the session, then changed in the lower too: conflict
    (up / "b.txt").write_text("b session\n")
    set_origin(str(up / "b.txt"), names, _origin_of(lower, "b.txt"))
    (lower / "b.txt").write_text("b changed underneath\n")
    # c.txt modified, lower untouched: no conflict
    (up / "c.txt").write_text("c session\n")
    set_origin(str(up / "c.txt"), names, _origin_of(lower, "c.txt"))
    changes = check_conflicts(scan(up, lower, names), lower)
    lines = diffview.porcelain(changes).splitlines()
    assert "R  a.txt -> z.txt" in lines
    assert "M! b.txt" in lines
    assert "M  c.txt" in lines
    assert any(line.startswith("!! b.txt: lower b.txt changed") for line in lines)


def test_select_pulls_in_structural_ancestors(session: Session, lower: Path,
                                              overlay: OverlayFactory) -> None:
    build_lower(lower)
    with overlay(session) as mnt:
        edit_through(mnt)
    changes = session_changes(session)
    picked = {c.path for c in select(changes, ["renamed/x.txt"])}
    assert picked == {"renamed", "renamed/x.txt"}
    picked = {c.path for c in select(changes, ["newdir/nested/f.txt"])}
    assert picked == {"newdir", "newdir/nested", "newdir/nested/f.txt"}
    assert {c.path for c in select(changes, ["old"])} >= {"renamed"}  # by rename source


def test_user_xattr_format_uppers(tmp_path: Path) -> None:
    """Sessions made without root use `user.overlay.*` and xattr whiteouts."""
    lower, root = tmp_path / "lower", tmp_path / "sess"
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "old").write_text("old\n")
    (lower / "gone").write_text("gone\n")
    session = Session("u", root, lower, "now", "user")
    for d in (session.upper, session.work, session.journal_dir, session.snapshots_dir):
        d.mkdir(parents=True)
    (session.upper / "gone").touch()
    os.setxattr(session.upper / "gone", "user.overlay.whiteout", b"y")
    (session.upper / "d").mkdir()
    os.setxattr(session.upper / "d", "user.overlay.opaque", b"y")
    (session.upper / "d" / "new").write_text("new\n")
    lines = diffview.porcelain(scan(session.upper, lower, session.xattrs)).splitlines()
    assert lines == ["A  d/new", "D  d/old", "D  gone"]
    commit(session, [])
    assert sorted(os.listdir(lower)) == ["d"] and os.listdir(lower / "d") == ["new"]
    assert os.listxattr(lower / "d") == [] and os.listdir(session.upper) == []


def test_discarding_a_rename_restores_the_old_name(session: Session, lower: Path) -> None:
    (lower / "a.txt").write_text("a\n")
    (session.upper / "z.txt").write_text("a\n")
    set_origin(str(session.upper / "z.txt"), session.xattrs, _origin_of(lower, "a.txt"))
    make_whiteout(str(session.upper / "a.txt"))
    assert diffview.porcelain(session_changes(session)) == "R  a.txt -> z.txt\n"
    discard(session, ["a.txt"])  # named by its old path
    assert os.listdir(session.upper) == []


def test_dir_recreated_inside_an_opaque_dir_hides_its_lower_namesake(
        session: Session, lower: Path, overlay: OverlayFactory) -> None:
    """`rm -r d2; mkdir d2; mkdir d2/sub`: only d2 gets the opaque xattr, yet nothing
    of the lower d2/sub shows through it, so committing must remove d2/sub/w (found
    by test_commit_model's random edits; the commit used to keep it)."""
    (lower / "d2" / "sub").mkdir(parents=True)
    (lower / "d2" / "sub" / "w").write_text("w")
    (lower / "d2" / "z").write_text("z")
    with overlay(session) as mnt:
        for child in ("sub/w", "z"):
            (mnt / "d2" / child).unlink()
        (mnt / "d2" / "sub").rmdir()
        (mnt / "d2").rmdir()
        (mnt / "d2").mkdir()
        (mnt / "d2" / "sub").mkdir()
        assert os.listdir(mnt / "d2" / "sub") == []
    paths = {c.path: c.status for c in session_changes(session)}
    assert paths.get("d2/sub/w") == "D" and paths.get("d2/z") == "D"
    commit(session, [])
    assert sorted(p.name for p in (lower / "d2").iterdir()) == ["sub"]
    assert list((lower / "d2" / "sub").iterdir()) == []
