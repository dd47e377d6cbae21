"""One compile of the shipped plugins per test run, shared with the tests' engine.

A cold boot of the pinned plugins compiles six ~18 MB Python components
(about 13 s of CPU each). Tests that boot them each in a fresh
$ASTRID_HOME would pay that again and again, so the first one to ask
compiles every pin of `plugins.lock` into a template home, the way
`astrid plugin install` does (`install.precompile`: the kernel's own
authenticated cache, keyed by that home's kernel key), and every home
after is seeded from it: the key copied, the cache entries hard-linked
(the kernel only ever adds entries, by atomic rename, so sharing the
inodes is safe). Tests about the cache itself do not use this.

The template is the test components' build directory (`TEMPLATE`), whose
`cache` is also the compile cache of the tests' own engine
(tests/runtime/conftest.py): a shipped plugin a test boots in that engine
(mdview, filetool) and the same pin in the template are one compile, not
two, and pytest-xdist workers wait for each other's compiles (the engine
locks each entry) instead of repeating them. On a developer's machine the
directory outlives the run, so a second run compiles nothing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

from astrid_runtime.engine import KernelEngine
from astrid_runtime.identity import KEY_FILE, load_or_create_key
from astrid_runtime.install import precompile
from astrid_runtime.lockfile import Lockfile, load_lockfile

REPO = Path(__file__).resolve().parents[2]
LOCKFILE = REPO / "plugins.lock"
#: The template home: the test components' build directory (git-ignored).
TEMPLATE = REPO / "tests" / "runtime" / "components" / "build"


def build_template(home: Path, lockfile: Path = LOCKFILE) -> Path:
    """Compile every pinned plugin into `home`'s compile cache; `home`."""
    load_or_create_key(home)
    cache = home / "cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    for entry in load_lockfile(lockfile, missing_ok=False).entries:
        precompile(entry, cache)
    return home


def warm_test_components() -> None:
    """pyecho, the component most kernel tests run, built and compiled into the
    tests' engine cache (`TEMPLATE/cache`, same key and settings as the `engine`
    fixture's) once per run: in the background, so the tests that need it
    find it ready (or wait on its build and compile locks, never repeat them)."""
    components = str(TEMPLATE.parent)
    if components not in sys.path:
        sys.path.insert(0, components)
    import testcomponents

    wasm = testcomponents.build_python("pyecho")
    KernelEngine(cache_dir=TEMPLATE / "cache").compile(wasm.read_bytes())


def warm_everything() -> None:
    """What a pytest-xdist worker compiles in the background (tests/conftest.py)."""
    build_template_once()
    warm_test_components()


def build_template_once(home: Path = TEMPLATE, lockfile: Path = LOCKFILE) -> Path:
    """`build_template(home)` for every process that asks (pytest-xdist workers share
    one template): the first compiles behind a file lock, the others wait for that
    lock and then find every entry in the cache; `home`."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build_template(home, lockfile)
    return home


def seed_home(home: Path, template: Path) -> Path:
    """Make `home` a kernel home whose compile cache is already warm."""
    home.mkdir(parents=True, exist_ok=True)
    key = home / KEY_FILE
    if not key.exists():
        shutil.copy2(template / KEY_FILE, key)
        os.chmod(key, 0o600)
    cache = home / "cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    for entry in (template / "cache").glob("*.cwasm"):
        if not (cache / entry.name).exists():
            os.link(entry, cache / entry.name)
    return home


def pinned_subset(path: Path, names: tuple[str, ...], lockfile: Path = LOCKFILE) -> Path:
    """A lockfile at `path` holding the repository's pins of `names` only (a kernel
    booted from it runs just those plugins, so the others need not compile)."""
    pinned = load_lockfile(lockfile, missing_ok=False)
    entries = tuple(e for e in pinned.entries if e.name in names)
    missing = set(names) - {e.name for e in entries}
    assert not missing, f"{lockfile} pins no {', '.join(sorted(missing))}"
    Lockfile(path, entries).save()
    return path
