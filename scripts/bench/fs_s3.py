"""scripts/bench/fs.py, part 5: the S3 leg. One s3rver on 127.0.0.1 (disk-backed,
under --base, reused across runs) seen through astrid-fs (a session with the bucket
at /mnt/s3, on its daemon path and with --passthrough), s3fs-fuse and rclone mount,
in the same run; the mounting and timing are scripts/bench/s3.py's.

Goals (issue 11): a sequential read at least as fast as s3fs-fuse's; the first
byte of an object no slower than rclone's.

s3fs and rclone are Debian packages; when one is missing this leg installs it
with apt-get (the bench only: tests never install anything)."""

from __future__ import annotations

import functools
import shutil
import statistics
import subprocess
from pathlib import Path

import s3 as s3bench
from fs_dataset import Sizes, log

PEERS = {"s3fs": "s3fs", "rclone": "rclone"}  # program -> Debian package
LEGS = {
    "astrid-fs": ("astrid-fs (daemon path)", functools.partial(s3bench.astrid_mount)),
    "astrid-fs-pt": ("astrid-fs --passthrough",
                     functools.partial(s3bench.astrid_mount, passthrough=True)),
    "s3fs": ("s3fs-fuse", s3bench.s3fs_mount),
    "rclone": ("rclone mount", s3bench.rclone_mount),
}
COLUMNS = ["read MB/s", "first byte ms", "list cold s", "list warm s", "mount s"]


def s3_sizes(sizes: Sizes) -> tuple[int, int]:
    """(object MiB, keys in the listed prefix) for these sizes."""
    return (256, 10_000) if sizes.big_mib >= 1024 else (64, 2_000)


def ensure_peers() -> dict[str, str]:
    """Install s3fs / rclone if missing; {leg: why not} for those still missing."""
    missing = [prog for prog in PEERS if shutil.which(prog) is None]
    if missing:
        log(f"s3: installing {' '.join(PEERS[p] for p in missing)} (apt-get)")
        proc = subprocess.run(["apt-get", "install", "-y", "-q",
                               *(PEERS[p] for p in missing)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            log(f"s3: apt-get failed: {proc.stderr.strip().splitlines()[-1:]}")
    return {prog: f"{prog} not installed (apt-get install {PEERS[prog]} failed)"
            for prog in PEERS if shutil.which(prog) is None}


Samples = dict[str, list[dict[str, float]]]


def run_s3(base: Path, sizes: Sizes, with_pt: bool
           ) -> tuple[dict[str, dict[str, float]], dict[str, str], Samples]:
    """Medians per leg, the legs that could not run (with why), and each
    round's numbers per leg. The legs are interleaved: each of `sizes.runs`
    rounds runs every leg once (a fresh mount per read, as s3.py does), so a
    host that slows down during the run slows every leg alike."""
    big_mib, keys = s3_sizes(sizes)
    unavailable = ensure_peers()
    s3base = base / "s3"
    s3base.mkdir(parents=True, exist_ok=True)
    server = s3bench.S3Server(s3base / "s3rver-data", buckets=(s3bench.BUCKET,), quiet=True)
    server.start()
    samples: Samples = {}
    try:
        s3bench.seed(server, big_mib, keys)
        for rnd in range(sizes.runs):
            for leg, (_title, mount) in LEGS.items():
                if leg in unavailable or (leg == "astrid-fs-pt" and not with_pt):
                    continue
                log(f"s3: {leg} (round {rnd + 1}/{sizes.runs})")
                try:
                    samples.setdefault(leg, []).append(
                        s3bench.fuse_leg(mount, server, s3base, big_mib, keys, 1))
                except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                    # a peer that cannot mount must not lose the other numbers
                    unavailable[leg] = str(e).splitlines()[0][:200]
                    samples.pop(leg, None)
    finally:
        server.stop()
    return medians_of(samples), unavailable, samples


def medians_of(samples: Samples) -> dict[str, dict[str, float]]:
    """Per leg, the median over its rounds of each number."""
    return {leg: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            for leg, rounds in samples.items() if rounds}


def _fmt(key: str, value: float) -> str:
    if key == "read MB/s":
        return f"{value:.0f}"
    if key == "first byte ms":
        return f"{value:.1f}"
    return f"{value:.2f} s" if value >= 0.1 else f"{value * 1000:.1f} ms"


def verdicts(results: dict[str, dict[str, float]], leg: str) -> tuple[str, str]:
    """(read >= s3fs?, first byte <= rclone?) for an astrid-fs leg."""
    mine, s3fs, rclone = results.get(leg), results.get("s3fs"), results.get("rclone")
    if mine is None:
        return "", ""
    read = "?" if s3fs is None else \
        ("met" if mine["read MB/s"] >= s3fs["read MB/s"] else "missed")
    first = "?" if rclone is None else \
        ("met" if mine["first byte ms"] <= rclone["first byte ms"] else "missed")
    return read, first


def table(results: dict[str, dict[str, float]], unavailable: dict[str, str]) -> str:
    rows = ["| leg | read MB/s | first byte (ms) | `ls -l` cold | `ls -l` warm | mount "
            "| read ≥ s3fs? | first byte ≤ rclone? |", "|---|---|---|---|---|---|---|---|"]
    for leg, (title, _mount) in LEGS.items():
        if leg in unavailable:
            rows.append(f"| {title} | n/a ({unavailable[leg]}) | | | | | | |")
        elif leg in results:
            read, first = verdicts(results, leg) if leg.startswith("astrid") else ("", "")
            cells = [_fmt(k, results[leg][k]) if k in results[leg] else "n/a"
                     for k in COLUMNS]
            rows.append(f"| {title} | " + " | ".join(cells) + f" | {read} | {first} |")
    return "\n".join(rows)


def markdown(results: dict[str, dict[str, float]], unavailable: dict[str, str],
             sizes: Sizes) -> str:
    big_mib, keys = s3_sizes(sizes)
    return "\n".join([
        "### S3 (the same run)",
        "",
        f"One {big_mib} MiB object and a prefix of {keys:,} keys on s3rver 3.7.1 "
        "(127.0.0.1, disk-backed), median of the rounds (every leg once a round, the "
        "legs interleaved); each leg reads through a fresh "
        "mount with caches dropped (128 KiB reads; the mount's own read-ahead decides "
        "what reaches the daemon). First byte: open and read 4 KiB of an object not "
        "read before (median of 20). Mount: from the mount command until the mount "
        "point is there (astrid-fs: a new session, whose base of the bucket is walked "
        "after the mount). astrid-fs reads the bucket at /mnt/s3 of a "
        "session (`--mounts`); a remote file is on the daemon path with or without "
        "--passthrough.",
        "",
        table(results, unavailable),
        "",
    ])
