"""Review and commit: diff and commit of N changed files beside rsync -a
applying the same changes, and snapshots of a session with N changes.

    .venv/bin/python scripts/bench/review.py [--files 10000] [--runs 3]

Builds, in a temporary directory on the same filesystem as /tmp, a lower
tree of N files (100 per dir, 4 KiB each) and a session whose upper layer
changes every one of them (new content, origin fingerprint as astrid-fs
writes at copy-up). Times, as medians of --runs fresh builds (warm page
cache; builds are not timed):
  - diff: the change list (`astrid-fs diff`'s work, porcelain output);
  - commit: `astrid-fs commit` of everything (journal, staging, syncfs),
    with $ASTRID_HOME on the lower's filesystem (staging by hard link) and on
    /dev/shm (staging by copy, as also for a mounted session);
  - rsync -a (and rsync -a --fsync) of the same changed files onto a copy of
    the lower: the ratio commit / rsync is the cost of crash safety, conflict
    checks and cleaning the upper;
  - snapshot of the session (first: data copied/reflinked; second,
    unchanged: hard links to the first), and rollback to the first.
Prints a Markdown table for docs/benchmarks.md ("## Review and commit").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_host import add_page_reporting_flag, steady_host

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from astrid_fs.overlay.whiteout import Origin, set_origin
from astrid_fs.review import diffview
from astrid_fs.review.commit import commit, session_changes
from astrid_fs.review.snapshot import rollback, snapshot
from astrid_fs.session import Session, create_or_open_session

PER_DIR = 100
SIZE = 4096


def build(root: Path, files: int, home: Path | None = None) -> Session:
    """A lower of `files` files and a session that changed each one."""
    lower = root / "lower"
    lower.mkdir()
    session = create_or_open_session("bench", lower, home or root / "home")
    upper = session.upper
    body = os.urandom(SIZE)
    for i in range(files):
        d = f"d{i // PER_DIR:04d}"
        if i % PER_DIR == 0:
            (lower / d).mkdir()
            (upper / d).mkdir()
        (lower / d / f"f{i}").write_bytes(body)
        os.utime(lower / d / f"f{i}", (time.time() - 3600,) * 2)  # edited an hour later
    for i in range(files):
        rel = f"d{i // PER_DIR:04d}/f{i}"
        (upper / rel).write_bytes(body[:-8] + i.to_bytes(8, "little"))
        set_origin(str(upper / rel), session.xattrs,
                   Origin.of_stat(rel, os.lstat(lower / rel)))
    return session


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rsync_apply(session: Session, root: Path, extra: list[str]) -> float:
    """rsync the changed files (the upper, a plain tree here) onto a copy of
    the lower, as one would land the same changes without astrid-fs."""
    target = root / "rsync-target"
    subprocess.run(["cp", "-a", str(session.lower), str(target)], check=True)
    src = root / "rsync-src"
    subprocess.run(["cp", "-a", str(session.upper), str(src)], check=True)
    subprocess.run(["sync"], check=True)
    took = timed(lambda: subprocess.run(["rsync", "-a", *extra, f"{src}/", f"{target}/"],
                                        check=True))
    probe = next(p for p in sorted(src.rglob("f*")) if p.is_file())
    assert (target / probe.relative_to(src)).read_bytes() == probe.read_bytes(), "rsync skipped"
    shutil.rmtree(target)
    shutil.rmtree(src)
    return took


def one_run(files: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        root = Path(tmp)
        session = build(root, files)
        subprocess.run(["sync"], check=True)
        out["diff"] = timed(lambda: diffview.porcelain(session_changes(session)))
        assert len(session_changes(session)) == files
        out["rsync -a"] = rsync_apply(session, root, [])
        out["rsync -a --fsync"] = rsync_apply(session, root, ["--fsync"])
        out["snapshot (first)"] = timed(lambda: snapshot(session))
        out["snapshot (unchanged, shared)"] = timed(lambda: snapshot(session))
        for i in range(0, files, 2):  # half the files change again
            path = session.upper / f"d{i // PER_DIR:04d}" / f"f{i}"
            with open(path, "r+b") as f:
                f.write(b"again")
        out["rollback to first"] = timed(lambda: rollback(session, "1"))
        subprocess.run(["sync"], check=True)
        out["commit"] = timed(lambda: commit(session, []))
        assert not session_changes(session)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp, \
            tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        session = build(Path(tmp), files, Path(shm))
        subprocess.run(["sync"], check=True)
        out["commit, upper on another fs (copies)"] = timed(lambda: commit(session, []))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    add_page_reporting_flag(parser)
    args = parser.parse_args()
    with steady_host(args.keep_page_reporting) as host:
        print(host, flush=True)
        run(args)


def run(args: argparse.Namespace) -> None:
    runs = [one_run(args.files) for _ in range(args.runs)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    def ratio(key: str, base: str) -> float:
        # median of per-run ratios: each run times both back to back, which
        # cancels most of a shared machine's drift
        return statistics.median(r[key] / r[base] for r in runs)

    print(f"{args.files} changed files of {SIZE} B, medians of {args.runs} runs\n")
    print("| operation | seconds | ratio to rsync -a | ratio to rsync -a --fsync |")
    print("|---|---|---|---|")
    for key in ("diff", "commit", "commit, upper on another fs (copies)", "rsync -a",
                "rsync -a --fsync", "snapshot (first)", "snapshot (unchanged, shared)",
                "rollback to first"):
        print(f"| {key} | {med[key]:.2f} | {ratio(key, 'rsync -a'):.1f}x | "
              f"{ratio(key, 'rsync -a --fsync'):.1f}x |")

if __name__ == "__main__":
    main()
