"""scripts/bench/fs.py, part 3: the workloads and how one leg is timed."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from fs_dataset import MIB, NEEDLE, Sizes, drop_caches, log
from fs_legs import Leg

WORKLOADS = [
    "read cold",
    "read warm",
    "write",
    "find cold",
    "find warm",
    "stat cold",
    "stat warm",
    "grep cold",
    "grep warm",
    "grep busy",
    "read parallel cold",
    "copy-up",
    "append upper",
    "git status first",
    "git status warm",
]


def read_file(path: Path) -> None:
    buf = bytearray(MIB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def write_file(path: Path, mib: int) -> None:
    buf = os.urandom(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(mib):
            os.write(fd, buf)
    finally:
        os.close(fd)


def append_each(d: Path) -> None:
    for name in sorted(os.listdir(d)):
        fd = os.open(d / name, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)


def removed_and_freed(path: Path, fs: Path, free_before: int, timeout: float = 60) -> None:
    """Unlink `path` and wait until the file system holding `fs` has its
    blocks free again (`free_before` free blocks, give or take 16 MiB of
    others' use). Native ext4 frees a file inside unlink(2): ~190 ms for the
    1 GiB write's file. Through a FUSE mount the unlink returns at once and
    the file is freed when the daemon lets its last fd go, at the kernel's
    FORGET a moment later, so that work used to land in the next timed
    write; and the os.sync() after the unlink then wrote the dead file's
    1 GiB to disk (docs/benchmarks.md, "A removed file is freed after
    unlink returns")."""
    os.unlink(path)
    st = os.statvfs(fs)
    slack = (16 * MIB) // st.f_frsize
    deadline = time.monotonic() + timeout
    while os.statvfs(fs).f_bfree < free_before - slack:
        if time.monotonic() > deadline:
            log(f"warning: {path}'s blocks not free {timeout:.0f} s after unlink")
            return
        os.sched_yield()


def cmd(argv: list[str], cwd: Path | None = None) -> Callable[[], None]:
    def go() -> None:
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
        if proc.returncode not in (0, 1):  # grep: 1 = no match
            raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr!r}")
    return go


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(fn: Callable[[], None], runs: int, cold: bool,
            before: Callable[[], None] | None = None,
            during: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
            ) -> list[float]:
    """`runs` times of `fn` (after a warm-up run unless `cold`, which drops
    the caches before each); `during()` is entered around each timed run."""
    out = []
    if not cold:
        fn()  # warm-up
    for _ in range(runs):
        if before:
            before()
        if cold:
            drop_caches()
        with during():
            out.append(timed(fn))
    return out


@contextlib.contextmanager
def busy_cpus() -> Iterator[None]:
    """A busy loop on every CPU (a build beside the agent's reads): a daemon
    thread that waited on the disk then competes with them for its CPU."""
    hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"])
            for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def git_status(repo: Path) -> Callable[[], None]:
    argv = ["git", "-c", f"safe.directory={repo}", "-C", str(repo), "status", "--porcelain"]
    return cmd(argv)


def run_leg(leg: Leg, sizes: Sizes, only: set[str]) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {}
    runs = sizes.runs

    def want(w: str) -> bool:
        return not only or w in only

    with leg.view() as (root, wroot):
        big = root / "big"
        tree = root / "tree"
        find = cmd(["find", str(tree), "-name", "nomatch*"])
        stat_all = cmd(["find", str(tree), "-printf", "%s %m %U %T@\n"])
        grep = cmd(["grep", "-r", NEEDLE, str(tree)])
        # every file of the tree read by 8 processes at once (a parallel
        # build's or ripgrep's reads: several requests waiting on the disk)
        read_parallel = cmd(["sh", "-c", 'find "$1" -type f -print0 | '
                             'xargs -0 -P 8 -n 100 cat > /dev/null', "sh", str(tree)])
        steps: list[tuple[str, Callable[[], list[float]]]] = [
            ("read cold", lambda: measure(lambda: read_file(big), runs, cold=True)),
            ("read warm", lambda: measure(lambda: read_file(big), runs, cold=False)),
            ("find cold", lambda: measure(find, runs, cold=True)),
            ("find warm", lambda: measure(find, runs, cold=False)),
            ("stat cold", lambda: measure(stat_all, runs, cold=True)),
            ("stat warm", lambda: measure(stat_all, runs, cold=False)),
            ("grep cold", lambda: measure(grep, runs, cold=True)),
            ("grep warm", lambda: measure(grep, runs, cold=False)),
            ("grep busy", lambda: measure(grep, runs, cold=True, during=busy_cpus)),
            ("read parallel cold", lambda: measure(read_parallel, runs, cold=True)),
            ("git status warm",
             lambda: measure(git_status(root / "git"), runs, cold=False)),
        ]
        for name, step in steps:
            if want(name):
                log(f"  {leg.name}: {name}")
                res[name] = step()

        if want("write"):
            log(f"  {leg.name}: write")
            times = []
            for i in range(runs):
                target = wroot / f"written{i}"
                free = os.statvfs(leg.data).f_bfree
                times.append(timed(functools.partial(write_file, target, sizes.big_mib)))
                removed_and_freed(target, leg.data, free)
                os.sync()
            res["write"] = times

        if want("copy-up") or want("append upper"):
            log(f"  {leg.name}: copy-up, append upper")
            cu_root = wroot / "copyup"
            os.sync()
            res["copy-up"] = [timed(functools.partial(append_each, cu_root / f"r{r}"))
                              for r in range(runs)]
            os.sync()
            res["append upper"] = [timed(lambda: append_each(cu_root / "r0"))
                                   for _ in range(runs)]

    if want("git status first"):
        log(f"  {leg.name}: git status first")
        times = []
        for _ in range(runs):
            with leg.view(writable_copy=False) as (root, _w):
                drop_caches()
                times.append(timed(git_status(root / "git")))
        res["git status first"] = times
    return res
