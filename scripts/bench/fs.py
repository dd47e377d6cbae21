#!/usr/bin/env python3
"""Time one workload set on native ext4, kernel overlayfs, fuse-overlayfs and astrid-fs.

Run as root (mounts, drop_caches):

    .venv/bin/python scripts/bench/fs.py --quick            # small sizes, ~2 minutes
    .venv/bin/python scripts/bench/fs.py --full --write-md  # the numbers in docs/benchmarks.md

Workloads (each leg sees the same data as its lower layer; native reads it directly):

    read cold / warm    sequential read of one big file (1 GiB full), 1 MiB reads;
                        cold = after `sync; echo 3 > /proc/sys/vm/drop_caches`
    write               sequential buffered write of a new file of the same size
                        (1 MiB writes, then close; `sync` after, untimed)
    find cold / warm    `find TREE -name NOMATCH` over ~20k files
    stat cold / warm    `find TREE -printf '%s %m %U %T@'` (lstat of every entry)
    grep cold / warm    `grep -r NEEDLE TREE`
    copy-up             append 1 byte to each of 1,000 lower files (first write)
    append upper        append 1 byte to each of those 1,000 files again (now upper)
    git status first    `git status` in a ~10k-file repository on a fresh mount and
                        after drop_caches (native: after drop_caches)
    git status warm     `git status` again, caches warm

Each number is the median of --runs repetitions (a fresh set of lower files for each
copy-up repetition, a fresh mount for each "first" git status). Ratios are to
native. The data set is built once under --base and reused by later runs.
The astrid-fs leg reports "not available" (and why) when `astrid-fs mount` fails.
The astrid-fs-pt leg mounts with `--passthrough` (FUSE passthrough for upper files,
fuse/passthrough.py); it reports "not available" when the kernel refuses passthrough.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LEGS = ["native", "kernel", "fuse-overlayfs", "astrid-fs", "astrid-fs-pt"]
ASTRID_LEGS = ("astrid-fs", "astrid-fs-pt")
LEG_TITLE = {
    "native": "native ext4",
    "kernel": "kernel overlayfs",
    "fuse-overlayfs": "fuse-overlayfs",
    "astrid-fs": "astrid-fs (daemon path)",
    "astrid-fs-pt": "astrid-fs --passthrough",
}
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
    "copy-up",
    "append upper",
    "git status first",
    "git status warm",
]
# Targets from the issue, as ratio to native (None: compare with fuse-overlayfs' ratio).
TARGETS: dict[str, tuple[str, float]] = {
    "read warm": ("abs", 1.2),
    "find warm": ("abs", 1.5),
    "stat warm": ("abs", 1.5),
    "git status warm": ("abs", 1.5),
    "grep warm": ("abs", 2.0),
    "find cold": ("vs-fuse-overlayfs", 1.2),
    "stat cold": ("vs-fuse-overlayfs", 1.2),
    "grep cold": ("vs-fuse-overlayfs", 1.2),
    "git status first": ("vs-fuse-overlayfs", 1.2),
}
NEEDLE = "astrid_bench_needle"
MIB = 1 << 20
TIMES = "\u00d7"  # multiplication sign
LE = "\u2264"
SECTION = "## astrid-fs mount"


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


# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# Legs: how each file system is mounted over the data set.


def astrid_fs_program() -> Path | None:
    for cand in (Path(sys.executable).parent / "astrid-fs", REPO / ".venv" / "bin" / "astrid-fs"):
        if cand.exists():
            return cand
    found = shutil.which("astrid-fs")
    return Path(found) if found else None


@dataclass
class Leg:
    name: str
    data: Path
    scratch: Path
    counter: int = 0
    mounted: list[Path] = field(default_factory=list)

    def fresh_dirs(self) -> tuple[Path, Path, Path]:
        self.counter += 1
        d = self.scratch / f"{self.name}-{os.getpid()}-{self.counter}"
        upper, work, mnt = d / "upper", d / "work", d / "mnt"
        for p in (upper, work, mnt):
            p.mkdir(parents=True)
        return upper, work, mnt

    def _mount(self, writable_copy: bool) -> Path:
        """Mount a fresh view of the data set; return the directory to work in."""
        upper, work, mnt = self.fresh_dirs()
        opts = f"lowerdir={self.data},upperdir={upper},workdir={work}"
        if self.name == "native":
            # a writable native copy of what the workloads modify; reads use the data set
            if writable_copy:
                shutil.copytree(self.data / "copyup", mnt / "copyup", symlinks=True)
            return mnt
        if self.name == "kernel":
            run(["mount", "-t", "overlay", "overlay", "-o", opts + ",redirect_dir=on", str(mnt)])
        elif self.name == "fuse-overlayfs":
            run(["fuse-overlayfs", "-o", opts, str(mnt)])
        elif self.name in ASTRID_LEGS:
            prog = astrid_fs_program()
            if prog is None:
                raise RuntimeError("no astrid-fs program found")
            home = upper.parent / "home"
            home.mkdir()
            path = "--passthrough" if self.name == "astrid-fs-pt" else "--no-passthrough"
            run([str(prog), "mount", "--lower", str(self.data), "--session",
                 f"bench{self.counter}", path, str(mnt)],
                env=dict(os.environ, ASTRID_HOME=str(home)))
        else:
            raise ValueError(self.name)
        self.mounted.append(mnt)
        return mnt

    def _umount(self, mnt: Path) -> None:
        if mnt in self.mounted:
            self.mounted.remove(mnt)
        if not is_mounted(mnt):
            return
        if self.name in ASTRID_LEGS:
            prog = astrid_fs_program()
            home = mnt.parent / "home"
            run([str(prog), "umount", str(mnt)], env=dict(os.environ, ASTRID_HOME=str(home)))
        else:
            run(["umount", str(mnt)])

    @contextmanager
    def view(self, writable_copy: bool = True) -> Iterator[tuple[Path, Path]]:
        """(read root, write root): the data set as this leg shows it, and where
        this leg's writes go (the same mount for overlays, a native copy for native)."""
        mnt = self._mount(writable_copy)
        try:
            yield (self.data if self.name == "native" else mnt), mnt
        finally:
            self._umount(mnt)

    def cleanup(self) -> None:
        for mnt in list(self.mounted):
            try:
                self._umount(mnt)
            except RuntimeError as e:
                log(f"warning: {e}; lazy unmount")
                subprocess.run(["umount", "-l", str(mnt)], check=False)


def probe(leg: Leg) -> str | None:
    """None if the leg can mount here, else why not."""
    if leg.name == "native":
        return None
    if leg.name == "fuse-overlayfs" and shutil.which("fuse-overlayfs") is None:
        return "fuse-overlayfs not installed (apt-get install fuse-overlayfs)"
    if leg.name in ASTRID_LEGS and astrid_fs_program() is None:
        return "astrid-fs program not found"
    try:
        with leg.view(writable_copy=False) as (root, mnt):
            if not (root / "big").exists():
                return "mounted, but the data set is not visible through it"
            if leg.name == "astrid-fs-pt":
                return passthrough_refused(mnt)
    except (RuntimeError, OSError) as e:
        why = str(e).splitlines()[0]
        if ": exit " in why:  # "argv: exit N: stderr" -> "exit N: stderr"
            why = "exit " + why.split(": exit ", 1)[1]
        return f"mount failed: {why[:200]}"
    return None


def passthrough_refused(mnt: Path) -> str | None:
    """None if the astrid-fs mount at `mnt` serves files by passthrough."""
    prog = astrid_fs_program()
    env = dict(os.environ, ASTRID_HOME=str(mnt.parent / "home"))
    (mnt / "big").open("rb").close()  # the daemon asks the kernel at the first open
    proc = subprocess.run([str(prog), "status", "--json"], capture_output=True, text=True,
                          env=env)
    for row in json.loads(proc.stdout or "{}").get("sessions", []):
        path = row.get("data_path") or {}
        if path.get("data_path") == "passthrough":
            return None
        return str(path.get("reason", "no data path reported"))
    return "no session reported"


# ---------------------------------------------------------------------------
# Workloads.


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
            before: Callable[[], None] | None = None) -> list[float]:
    out = []
    if not cold:
        fn()  # warm-up
    for _ in range(runs):
        if before:
            before()
        if cold:
            drop_caches()
        out.append(timed(fn))
    return out


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
        steps: list[tuple[str, Callable[[], list[float]]]] = [
            ("read cold", lambda: measure(lambda: read_file(big), runs, cold=True)),
            ("read warm", lambda: measure(lambda: read_file(big), runs, cold=False)),
            ("find cold", lambda: measure(find, runs, cold=True)),
            ("find warm", lambda: measure(find, runs, cold=False)),
            ("stat cold", lambda: measure(stat_all, runs, cold=True)),
            ("stat warm", lambda: measure(stat_all, runs, cold=False)),
            ("grep cold", lambda: measure(grep, runs, cold=True)),
            ("grep warm", lambda: measure(grep, runs, cold=False)),
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
                times.append(timed(functools.partial(write_file, target, sizes.big_mib)))
                os.unlink(target)
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


# ---------------------------------------------------------------------------
# Report.


def fmt_time(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}{TIMES}" if r < 10 else f"{r:.0f}{TIMES}"


def target_text(w: str) -> str:
    if w not in TARGETS:
        return ""
    kind, val = TARGETS[w]
    if kind == "abs":
        return f"{LE} {val}{TIMES}"
    return f"{LE} {val}{TIMES} fuse-overlayfs' ratio"


def verdict(w: str, medians: dict[str, dict[str, float]], leg: str = "astrid-fs") -> str:
    if w not in TARGETS or w not in medians.get(leg, {}) or w not in medians["native"]:
        return ""
    kind, val = TARGETS[w]
    ratio = medians[leg][w] / medians["native"][w]
    if kind == "abs":
        return "met" if ratio <= val else "missed"
    fo = medians.get("fuse-overlayfs", {}).get(w)
    if fo is None:
        return "?"
    return "met" if ratio <= val * fo / medians["native"][w] else "missed"


def table(medians: dict[str, dict[str, float]], unavailable: dict[str, str]) -> str:
    legs = [leg for leg in LEGS if leg in medians or leg in unavailable]
    checked = [leg for leg in ASTRID_LEGS if leg in medians]
    head = ["workload"] + [LEG_TITLE[leg] for leg in legs] + ["target (astrid-fs)"] + \
        [f"met? ({'passthrough' if leg == 'astrid-fs-pt' else 'daemon path'})"
         for leg in checked]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    native = medians.get("native", {})
    for w in WORKLOADS:
        if not any(w in medians.get(leg, {}) for leg in legs):
            continue
        row = [w]
        for leg in legs:
            if leg in unavailable:
                row.append("n/a")
                continue
            v = medians.get(leg, {}).get(w)
            if v is None:
                row.append("-")
            elif leg == "native" or w not in native:
                row.append(fmt_time(v))
            else:
                row.append(f"{fmt_time(v)} ({fmt_ratio(v / native[w])})")
        row += [target_text(w)] + [verdict(w, medians, leg) for leg in checked]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown(medians: dict[str, dict[str, float]], unavailable: dict[str, str],
             sizes: Sizes, mode: str, base: Path, when: str | None = None,
             load: str | None = None) -> str:
    when = when or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = [
        SECTION,
        "",
        f"`scripts/bench/fs.py --{mode}` on {when}: {sizes.label}; median of the runs, "
        f"ratio to native in brackets. Native is {fs_type(base)} under `{base}`; "
        f"kernel {platform.release()}, {os.cpu_count()} cores, a shared machine "
        "(trust ratios more than absolutes). Overlays mount the data set as their lower "
        "layer with a fresh upper; kernel overlayfs with `redirect_dir=on`. "
        "Cold = after `echo 3 > /proc/sys/vm/drop_caches`; git status first = on a "
        "fresh mount, after dropping caches."
        + (f" Load average during the run: {load}." if load else ""),
        "",
        table(medians, unavailable),
        "",
    ]
    for leg, why in unavailable.items():
        out.append(f"{LEG_TITLE[leg]}: not available ({why}).")
        out.append("")
    if "astrid-fs-pt" in medians:
        out.append("astrid-fs has two data paths: the daemon path (the default: every read "
                   "and write of a file goes through the daemon) and `--passthrough` (FUSE "
                   "passthrough, fuse/passthrough.py: the kernel reads and writes files in "
                   "the upper layer itself; files still in the lower layer are read through "
                   "the daemon, so that an open reader follows a later copy-up). So `read` "
                   "(a lower file) does not change with passthrough; `write`, `copy-up` and "
                   "`append upper` do. With passthrough every open is an OPEN and a RELEASE "
                   "round trip (answered in C from the shim's table, but still one turn of "
                   "the daemon's request loop each), where the daemon path runs in no_open "
                   "mode and sends none: open-heavy reads (grep, git status) pay for that.")
        out.append("")
    out.append("Run it: `sudo .venv/bin/python scripts/bench/fs.py --full --write-md` "
               "(`--quick` for small sizes).")
    out.append("")
    return "\n".join(out)


def write_section(doc: Path, section: str) -> None:
    if doc.exists():
        text = doc.read_text()
    else:
        text = "# Benchmarks\n\nMeasured numbers for Astrid's parts; each section says how to " \
               "reproduce it.\n"
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        tail = "\n".join(lines[end:])
        new = "\n".join(lines[:start]) + ("\n" if start else "") + section + \
            ("\n" + tail if tail else "")
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(new.rstrip("\n") + "\n")
    os.replace(tmp, doc)


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (default)")
    size.add_argument("--full", action="store_true", help="1 GiB, 20k files, 10k-file repo")
    ap.add_argument("--runs", type=int, help="repetitions per workload (default 5 full, 3 quick)")
    ap.add_argument("--base", type=Path, default=Path("/tmp/astrid-bench"),
                    help="where the data set and mounts live (default /tmp/astrid-bench)")
    ap.add_argument("--legs", default=",".join(LEGS), help=f"comma list of {','.join(LEGS)}")
    ap.add_argument("--workloads", default="", help="comma list (default: all)")
    ap.add_argument("--json", type=Path, help="write raw times here")
    ap.add_argument("--from-json", type=Path, metavar="FILE",
                    help="measure nothing: print (and --write-md) the table of a saved --json")
    ap.add_argument("--write-md", nargs="?", const=REPO / "docs" / "benchmarks.md", type=Path,
                    metavar="FILE", help=f"replace the '{SECTION}' section of FILE "
                    "(default docs/benchmarks.md)")
    args = ap.parse_args(argv)

    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        sizes = Sizes(**saved["sizes"])
        medians = {leg: {w: statistics.median(t) for w, t in r.items()}
                   for leg, r in saved["times"].items()}
        print(table(medians, saved["unavailable"]))
        if args.write_md:
            base = Path(saved.get("base", args.base))
            section = markdown(medians, saved["unavailable"], sizes, saved["mode"], base,
                               saved.get("when"), saved.get("load"))
            write_section(args.write_md, section)
        return 0

    if os.geteuid() != 0:
        print("fs.py: run as root (it mounts overlays and drops caches)", file=sys.stderr)
        return 2
    mode = "full" if args.full else "quick"
    sizes = FULL if args.full else QUICK
    if args.runs:
        sizes = Sizes(sizes.big_mib, sizes.tree_files, sizes.git_files, sizes.copyup_files,
                      args.runs)
    legs = [x for x in args.legs.split(",") if x]
    bad = [x for x in legs if x not in LEGS]
    if bad or "native" not in legs:
        print(f"fs.py: --legs must include native and be among {LEGS}", file=sys.stderr)
        return 2
    only = {w for w in args.workloads.split(",") if w}
    if only - set(WORKLOADS):
        print(f"fs.py: unknown workloads {sorted(only - set(WORKLOADS))}", file=sys.stderr)
        return 2

    base = args.base.resolve()
    data = base / f"data-{mode}"
    scratch = base / "scratch"
    base.mkdir(parents=True, exist_ok=True)
    log(f"native file system under {base}: {fs_type(base)}")
    build_dataset(data, sizes)
    if scratch.exists():
        leftovers = [m for m in scratch.glob("*/mnt") if is_mounted(m)]
        if leftovers:
            print(f"fs.py: still mounted from an earlier run: {leftovers}", file=sys.stderr)
            return 1
        shutil.rmtree(scratch)
    scratch.mkdir()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    load_before = os.getloadavg()[0]
    results: dict[str, dict[str, list[float]]] = {}
    unavailable: dict[str, str] = {}
    active: list[Leg] = []
    try:
        for name in legs:
            leg = Leg(name, data, scratch)
            active.append(leg)
            why = probe(leg)
            if why:
                log(f"{name}: not available: {why}")
                unavailable[name] = why
                continue
            log(f"{name}:")
            results[name] = run_leg(leg, sizes, only)
    finally:
        for leg in active:
            leg.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end (1-minute)"
    medians = {leg: {w: statistics.median(t) for w, t in r.items()} for leg, r in results.items()}
    print(table(medians, unavailable))
    for name, why in unavailable.items():
        print(f"\n{LEG_TITLE[name]}: not available ({why})")
    if args.json:
        args.json.write_text(json.dumps({"sizes": sizes.__dict__, "mode": mode,
                                         "times": results, "unavailable": unavailable,
                                         "base": str(base), "when": when, "load": load,
                                         "native_fs": fs_type(base)},
                                        indent=1))
    if args.write_md:
        write_section(args.write_md,
                      markdown(medians, unavailable, sizes, mode, base, when, load))
        log(f"wrote section '{SECTION}' of {args.write_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
