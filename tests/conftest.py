"""Fixtures shared by all test tiers: a scratch $ASTRID_HOME and real
astrid-fs mounts that are always unmounted afterwards."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _pytest.pathlib import make_numbered_dir_with_cleanup

from tests.support.mounts import MountedSession, mounted_points, require_fuse
from tests.support.warmhome import build_template_once, warm_everything

_names = itertools.count()

#: Where each run's temp dirs go: short, because control sockets live in them and
#: an AF_UNIX path holds at most 107 bytes. pytest's own default
#: (/tmp/pytest-of-root/pytest-N, plus popen-gwN/ under pytest-xdist) left too
#: little room for a test's name, $ASTRID_HOME/sessions/NAME/run/control.sock.
SHORT_TEMP_ROOT = Path("/tmp/astrid-t")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Give the run a short --basetemp unless one was given (xdist workers are
    handed theirs, under the controller's): /tmp/astrid-t/rN/t, numbered and
    pruned to the last three runs like pytest's own, each locked while it runs."""
    if config.option.basetemp or hasattr(config, "workerinput"):
        return
    SHORT_TEMP_ROOT.mkdir(mode=0o700, exist_ok=True)
    at_end = contextlib.ExitStack()
    config.add_cleanup(at_end.close)
    run = make_numbered_dir_with_cleanup(root=SHORT_TEMP_ROOT, prefix="r", mode=0o700, keep=3,
                                         lock_timeout=3 * 24 * 3600, register=at_end.callback)
    # pytest empties a given basetemp; a subdirectory keeps the run's lock file.
    config.option.basetemp = str(run / "t")


#: The template build a pytest-xdist worker started in the background (see below).
_template_build: threading.Thread | None = None


#: Fixtures whose tests compile components (the template home, pyecho, anything
#: through the tests' engine): they run after the rest.
COMPILING = ("shipped_home", "components", "engine")


def _compiles(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return any(name in names for name in COMPILING)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, start compiling the template home and the test
    components as soon as the run is known to need them (in a thread: wasmtime
    releases the GIL while it compiles; one worker builds, the others wait on its
    file locks) and run the tests that compile last, so the compile overlaps the
    tests that do not."""
    global _template_build
    if not hasattr(config, "workerinput"):
        return
    _name_xdist_groups(config, items)
    if not any(_compiles(item) for item in items):
        return
    items.sort(key=_compiles)  # stable: every worker must collect the same order
    _template_build = threading.Thread(target=warm_everything, name="template build",
                                       daemon=True)
    _template_build.start()


def _name_xdist_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`--dist loadgroup` for pytest 9: pytest-xdist (3.8) names a test's group by
    appending `@GROUP` to `item._nodeid`, which pytest 9 no longer reads (a node's id
    is `item._id`), so every group was silently spread over all workers. Append it
    where pytest 9 reads it; a pytest-xdist that does it itself is left alone."""
    if not config.getvalue("loadgroup"):
        return
    from _pytest.nodeid import coerce_node_id

    for item in items:
        groups = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                         for mark in item.iter_markers("xdist_group")})
        if groups and hasattr(item, "_id") and "@" not in item.nodeid.rpartition("]")[2]:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(groups)}")


@pytest.fixture(scope="session")
def shipped_home() -> Path:
    """A kernel home with every pinned plugin compiled (tests/support/warmhome.py):
    seed test homes from it with `seed_home` so the run compiles each plugin once
    (once for all pytest-xdist workers, and once with the tests' own engine)."""
    if _template_build is not None:
        _template_build.join()
    # Built (or its failure raised) here if the background build did not finish it.
    return build_template_once()


@pytest.fixture
def astrid_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "astrid-home"
    home.mkdir()
    monkeypatch.setenv("ASTRID_HOME", str(home))
    return home


@pytest.fixture
def mount_session(tmp_path: Path, astrid_home: Path
                  ) -> Iterator[Callable[..., MountedSession]]:
    """Factory: mount_session(lower=None, name=None) -> a live MountedSession.

    Every session it mounted is unmounted at teardown; a mount left behind
    fails the test."""
    require_fuse()
    made: list[MountedSession] = []

    def make(lower: Path | None = None, name: str | None = None,
             *extra: str) -> MountedSession:
        n = next(_names)
        if lower is None:
            lower = tmp_path / f"lower{n}"
            lower.mkdir()
        mnt = tmp_path / f"mnt{n}"
        mnt.mkdir()
        session = MountedSession(name or f"s{n}", astrid_home, lower, mnt)
        session.mount(*extra)
        made.append(session)
        return session

    yield make
    leftovers = []
    for session in made:
        if str(session.mnt) in mounted_points():
            session.umount()
            leftovers.append(str(session.mnt))
    assert not [m for m in leftovers if m in mounted_points()], "mounts left behind"
