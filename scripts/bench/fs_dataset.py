"""scripts/bench/fs.py, part 1: sizes, the data set every leg sees as its lower
layer, and small process helpers."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

NEEDLE = "astrid_bench_needle"
MIB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    big_mib: int
    tree_files: int
    git_files: int
    copyup_files: int
    runs: int

    @property
    def label(self) -> str:
        big = f"{self.big_mib // 1024} GiB" if self.big_mib >= 1024 else f"{self.big_mib} MiB"
        return (f"{big} file, {self.tree_files:,}-file tree, {self.git_files:,}-file git repo, "
                f"{self.copyup_files:,} copy-up files, {self.runs} runs")


FULL = Sizes(big_mib=1024, tree_files=20_000, git_files=10_000, copyup_files=1000, runs=5)
QUICK = Sizes(big_mib=128, tree_files=2_000, git_files=1_000, copyup_files=200, runs=3)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def fs_type(path: Path) -> str:
    proc = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "?"


# ext4 without a journal (this VM's root) skips, when it allocates an inode,
# every free inode deleted in the last 60 s (360 s while its inode table block
# is dirty): fs/ext4/ialloc.c, recently_deleted(). After a bench's cleanup
# removed tens of thousands of files, each create scans past them: 1,000
# copy-ups cost ~75 ms of system time on a quiet disk and 0.9-1 s right
# after (perf: about half of all samples under recently_deleted). So the bench waits out the
# window after its own deletions (`settle`); deletions by others (a test
# suite running meanwhile) it cannot see.
RECENTLY_DELETED_S = 360
_DELETED_STAMP = ".last-delete"


def journal_less_ext4(path: Path) -> bool:
    """Is `path` on ext4 without a journal (`journal_task` reads <none>)?"""
    proc = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target", str(path)],
                          capture_output=True, text=True)
    fields = proc.stdout.split()
    if len(fields) != 2 or fields[0] != "ext4":
        return False
    try:
        task = Path(f"/sys/fs/ext4/{os.path.basename(fields[1])}/journal_task").read_text()
    except OSError:
        return False
    return task.strip() == "<none>"


IMAGE_GIB = 24


def mount_ext4_image(image: Path, base: Path) -> None:
    """Loop-mount the ext4 file system in `image` at `base`; make it first
    if `image` does not exist (a sparse IMAGE_GIB GiB file, mkfs.ext4's
    defaults: with a journal). For `fs.py --ext4-image`."""
    if is_mounted(base):
        raise RuntimeError(f"{base} is a mount point already")
    if not image.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as f:
            f.truncate(IMAGE_GIB << 30)
        run(["mkfs.ext4", "-q", "-F", str(image)])
    base.mkdir(parents=True, exist_ok=True)
    run(["mount", "-o", "loop", str(image), str(base)])


def unmount_ext4_image(base: Path) -> None:
    subprocess.run(["umount", str(base)], check=False)


def removed(base: Path, tree: Path) -> None:
    """Remove `tree` and note when (for `settle`)."""
    shutil.rmtree(tree, ignore_errors=True)
    (base / _DELETED_STAMP).write_text(str(time.time()))


def settle(base: Path) -> None:
    """Wait until the bench's last mass deletion under `base` is out of
    the recently-deleted window (call it on journal-less ext4 only)."""
    try:
        since = time.time() - float((base / _DELETED_STAMP).read_text())
    except (OSError, ValueError):
        return
    if since < RECENTLY_DELETED_S:
        wait = RECENTLY_DELETED_S - since
        log(f"waiting {wait:.0f} s: ext4 without a journal skips inodes deleted in the last "
            f"{RECENTLY_DELETED_S} s on every create (fs_dataset.py, RECENTLY_DELETED_S)")
        time.sleep(wait)


# The data set (the lower layer of every overlay leg).


def build_dataset(data: Path, sizes: Sizes) -> None:
    stamp = data / ".complete"
    want = json.dumps(sizes.__dict__, sort_keys=True)
    if stamp.exists() and stamp.read_text() == want:
        return
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    rnd = random.Random(20261124)
    log(f"building data set in {data} ({sizes.label})")

    chunk = rnd.randbytes(MIB)
    with open(data / "big", "wb") as f:
        for i in range(sizes.big_mib):
            f.write(chunk[i % 7 :] + chunk[: i % 7])

    words = [
        "alpha", "beta", "gamma", "delta", "overlay", "upper", "lower", "inode",
        "dentry", "whiteout", "session", "commit", "def", "return", "import", "self",
    ]

    def text(n: int) -> bytes:
        out = " ".join(rnd.choice(words) for _ in range(n // 6))
        if rnd.random() < 0.01:
            out += " " + NEEDLE
        return (out + "\n").encode()

    per_dir = 50
    ndirs = max(1, sizes.tree_files // per_dir)
    for d in range(ndirs):
        sub = data / "tree" / f"d{d // 20:03d}" / f"s{d % 20:02d}"
        sub.mkdir(parents=True)
        for i in range(per_dir):
            (sub / f"f{i:03d}.txt").write_bytes(text(rnd.randint(200, 6000)))

    git = data / "git"
    for i in range(sizes.git_files):
        p = git / f"pkg{i // 100:03d}" / f"mod{i % 100:02d}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text(rnd.randint(200, 2000)))
    genv = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
                GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
    run(["git", "init", "-q", "-b", "main", str(git)], env=genv)
    run(["git", "-C", str(git), "add", "-A"], env=genv)
    run(["git", "-C", str(git), "commit", "-q", "-m", "bench"], env=genv)
    run(["git", "-C", str(git), "status", "--porcelain"], env=genv)  # settle the index

    for r in range(sizes.runs):
        cu = data / "copyup" / f"r{r}"
        cu.mkdir(parents=True)
        payload = rnd.randbytes(4096)
        for i in range(sizes.copyup_files):
            (cu / f"f{i:04d}").write_bytes(payload)

    os.sync()
    stamp.write_text(want)
