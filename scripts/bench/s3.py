#!/usr/bin/env python3
"""S3 numbers: the astrid-fs s3 driver beside s3fs-fuse and rclone mount,
all against the same s3rver on 127.0.0.1.

    .venv/bin/python scripts/bench/s3.py --quick             # 64 MiB, 2,000 keys
    .venv/bin/python scripts/bench/s3.py --full --write-md   # the numbers in docs/benchmarks.md

Workloads:
    read MB/s        sequential read of one object (256 MiB full) in 128 KiB
                     reads (what FUSE sends); mounts: a fresh mount, caches dropped
    list cold        `ls -l` of a prefix with 10,000 keys (full) on a fresh mount;
                     driver: `list_dir` on a fresh driver (sizes and mtimes come
                     from the listing, so it is the whole of `ls -l`)
    list warm        the same again; driver: through the metadata cache (TTL)
    first byte       open + read 4 KiB of an object not read before (median of 20)

Legs: `driver` (astrid_fs.drivers.s3 directly, from Python), `s3fs` (Debian
s3fs 1.90, path-style requests), `rclone` (`rclone mount --use-server-modtime`,
AWS_CA_BUNDLE unset), and `astrid-fs` (a session mounted with `--mounts`,
the bucket at /mnt/s3). s3rver stores on disk under --base and is reused across runs.
Run as root (drop_caches; FUSE mounts).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, suppress
from functools import partial
from pathlib import Path

from bench_host import add_page_reporting_flag, steady_host

REPO = Path(__file__).resolve().parents[2]

sys.path.insert(0, str(REPO))

import obstore  # noqa: E402
from obstore.store import S3Store  # noqa: E402

from astrid_fs.drivers.cache import CacheConfig, CachingDriver  # noqa: E402
from astrid_fs.drivers.s3 import S3Driver, S3Options  # noqa: E402
from tests.fs.s3_fixture import ACCESS_KEY, S3Server  # noqa: E402

BUCKET = "bench"
READ = 128 * 1024
MIB = 1 << 20
SECRET = "S3RVER"  # s3rver's own test key pair; nothing real


def drop_caches() -> None:
    os.sync()
    with suppress(OSError), open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def store(server: S3Server) -> S3Store:
    return S3Store(BUCKET, endpoint=server.endpoint, region="us-east-1",
                   access_key_id=ACCESS_KEY, secret_access_key=SECRET,
                   client_options={"allow_http": True, "timeout": "300s"})


def seed(server: S3Server, big_mib: int, keys: int) -> None:
    """Upload the data set unless this --base already has it."""
    s = store(server)
    try:
        have = obstore.head(s, "big.bin")["size"] == big_mib * MIB
    except FileNotFoundError:
        have = False
    if not have:
        print(f"seeding big.bin ({big_mib} MiB)", file=sys.stderr)
        obstore.put(s, "big.bin", os.urandom(big_mib * MIB))
    listed = obstore.list_with_delimiter(s, f"list{keys}")["objects"]
    if len(listed) != keys:
        print(f"seeding {keys} keys", file=sys.stderr)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: obstore.put(s, f"list{keys}/k{i:05d}.csv", b"a,b\n"),
                          range(keys)))
    for i in range(20):
        obstore.put(s, f"fb/obj{i:02d}", random.Random(i).randbytes(MIB))


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---- the driver leg ----------------------------------------------------------------------

def driver_leg(server: S3Server, big_mib: int, keys: int, runs: int) -> dict[str, float]:
    env = {"HOME": tempfile.gettempdir(), "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET}

    def make() -> S3Driver:
        return S3Driver(f"s3://{BUCKET}", S3Options(endpoint=server.endpoint), env=env)

    def read_all() -> None:
        drv = make()
        reader = drv.open_reader("big.bin")
        off = 0
        while chunk := reader.pread(READ, off):
            off += len(chunk)
        reader.close()
        drv.close()

    out: dict[str, float] = {}
    out["read MB/s"] = big_mib * MIB / 1e6 / statistics.median(
        timed(read_all) for _ in range(runs))
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(runs):
        cached = CachingDriver(make(), CacheConfig())
        cold.append(timed(partial(cached.list_dir, f"list{keys}")))
        warm.append(timed(partial(cached.list_dir, f"list{keys}")))
        cached.close()
    out["list cold s"], out["list warm s"] = statistics.median(cold), statistics.median(warm)
    drv = make()
    drv.check()  # a warm connection, as a mounted filesystem has
    out["first byte ms"] = 1000 * statistics.median(
        timed(partial(first_byte, drv, i)) for i in range(20))
    drv.close()
    return out


def first_byte(drv: S3Driver, i: int) -> None:
    reader = drv.open_reader(f"fb/obj{i:02d}")
    reader.pread(4096, 0)
    reader.close()


# ---- the FUSE legs -------------------------------------------------------------------------

def wait_mounted(mnt: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mount exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError("mount did not appear in 30 s")
        time.sleep(0.005)  # (also times a mount: "mount s")


def umount(mnt: Path) -> None:
    subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
    deadline = time.monotonic() + 30
    while os.path.ismount(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)


@contextmanager
def s3fs_mount(server: S3Server, base: Path) -> Iterator[Path]:
    mnt = base / "mnt-s3fs"
    mnt.mkdir(exist_ok=True)
    passwd = base / "s3fs.passwd"
    passwd.write_text(f"{ACCESS_KEY}:{SECRET}\n")
    passwd.chmod(0o600)
    subprocess.run(["s3fs", BUCKET, str(mnt), "-o", f"url={server.endpoint}",
                    "-o", "use_path_request_style", "-o", f"passwd_file={passwd}",
                    "-o", "endpoint=us-east-1"], check=True)
    try:
        wait_mounted(mnt)
        yield mnt
    finally:
        umount(mnt)


@contextmanager
def rclone_mount(server: S3Server, base: Path) -> Iterator[Path]:
    mnt = base / "mnt-rclone"
    mnt.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env |= {"RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": server.endpoint,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ACCESS_KEY,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET,
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true"}
    proc = subprocess.Popen(["rclone", "mount", f"bench:{BUCKET}", str(mnt),
                             "--use-server-modtime", "--read-only"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_mounted(mnt, proc)
        yield mnt
    finally:
        umount(mnt)
        proc.terminate()
        proc.wait(timeout=30)


_astrid_sessions = iter(range(1_000_000))


@contextmanager
def astrid_mount(server: S3Server, base: Path, passthrough: bool = False) -> Iterator[Path]:
    """`astrid-fs mount --mounts` with the bucket at /mnt/s3; yields that directory.
    With `passthrough` the mount has --passthrough (upper files; a remote file
    stays on the daemon path)."""
    home, lower, mnt = base / "astrid-home", base / "astrid-lower", base / "mnt-astrid"
    for d in (home, lower, mnt):
        d.mkdir(exist_ok=True)
    table = base / "astrid-mounts.toml"
    table.write_text(f'[[mount]]\npath = "/mnt/s3"\nsource = "s3://{BUCKET}"\n'
                     f'endpoint = "{server.endpoint}"\nregion = "us-east-1"\n')
    env = {**os.environ, "ASTRID_HOME": str(home), "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET}
    name = f"bench{next(_astrid_sessions)}-{os.getpid()}"
    cli = [sys.executable, "-m", "astrid_fs.cli"]
    path = "--passthrough" if passthrough else "--no-passthrough"
    subprocess.run([*cli, "mount", "--lower", str(lower), "--session", name, "--mounts",
                    str(table), path, str(mnt)], env=env, check=True, capture_output=True)
    try:
        yield mnt / "mnt" / "s3"
    finally:
        subprocess.run([*cli, "umount", str(mnt)], env=env, check=False, capture_output=True)
        subprocess.run(["rm", "-rf", str(home / "sessions" / name)], check=False)


Mounter = Callable[[S3Server, Path], AbstractContextManager[Path]]


def fuse_leg(mount: Mounter, server: S3Server, base: Path,
             big_mib: int, keys: int, runs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    reads, cold, warm = [], [], []
    for _ in range(runs):
        with mount(server, base) as mnt:
            drop_caches()

            def read_all(m: Path = mnt) -> None:
                with open(m / "big.bin", "rb", buffering=0) as f:
                    while f.read(READ):
                        pass
            reads.append(timed(read_all))
        with mount(server, base) as mnt:
            def ls(m: Path = mnt) -> None:
                subprocess.run(["ls", "-l", str(m / f"list{keys}")], check=True,
                               stdout=subprocess.DEVNULL)
            cold.append(timed(ls))
            warm.append(timed(ls))
    out["read MB/s"] = big_mib * MIB / 1e6 / statistics.median(reads)
    out["list cold s"], out["list warm s"] = statistics.median(cold), statistics.median(warm)
    with contextlib.ExitStack() as stack:
        # (astrid-fs: a new session each time, whose base of the bucket is
        # walked after the mount: review/remotebase.py)
        t = time.perf_counter()
        mnt = stack.enter_context(mount(server, base))
        out["mount s"] = time.perf_counter() - t
        out["first byte ms"] = 1000 * statistics.median(
            timed(partial(first_byte_file, mnt / "fb" / f"obj{i:02d}")) for i in range(20))
    return out


def first_byte_file(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        f.read(4096)


# ---- report --------------------------------------------------------------------------------

COLUMNS = ["read MB/s", "list cold s", "list warm s", "first byte ms", "mount s"]


def fmt(key: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if key == "read MB/s":
        return f"{value:.0f}"
    if key.endswith(" s"):
        return f"{value:.2f} s" if value >= 0.1 else f"{value * 1000:.1f} ms"
    return f"{value:.2f}"


def table(results: dict[str, dict[str, float] | str]) -> str:
    rows = ["| leg | read MB/s | `ls -l` cold | `ls -l` warm | first byte (ms) | mount |",
            "|---|---|---|---|---|---|"]
    for leg, res in results.items():
        if isinstance(res, str):
            rows.append(f"| {leg} | {res} | | | | |")
        else:
            rows.append(f"| {leg} | " + " | ".join(fmt(k, res.get(k)) for k in COLUMNS) + " |")
    return "\n".join(rows)


def write_md(section: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    text = path.read_text()
    start = text.find("\n## S3\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start + 1] + section + (text[end:] if end >= 0 else "")
    path.write_text(text.rstrip("\n") + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="64 MiB, 2,000 keys, 1 run")
    size.add_argument("--full", action="store_true", help="256 MiB, 10,000 keys, 3 runs")
    ap.add_argument("--base", type=Path, default=Path("/tmp/astrid-bench-s3"))
    ap.add_argument("--legs", default="driver,astrid-fs,s3fs,rclone")
    ap.add_argument("--write-md", action="store_true", help="update docs/benchmarks.md ## S3")
    add_page_reporting_flag(ap)
    args = ap.parse_args()
    with steady_host(args.keep_page_reporting) as host:
        print(host, flush=True)
        return run(args)


def run(args: argparse.Namespace) -> int:
    big_mib, keys, runs = (256, 10_000, 3) if args.full else (64, 2_000, 1)
    args.base.mkdir(parents=True, exist_ok=True)
    server = S3Server(args.base / "s3rver-data", buckets=(BUCKET,), quiet=True)
    server.start()
    results: dict[str, dict[str, float] | str] = {}
    try:
        seed(server, big_mib, keys)
        legs = args.legs.split(",")
        for leg in legs:
            print(f"leg {leg}", file=sys.stderr)
            try:
                if leg == "driver":
                    results["astrid s3 driver (Python, no FUSE)"] = driver_leg(
                        server, big_mib, keys, runs)
                elif leg == "astrid-fs":
                    results["astrid-fs mount (/mnt/s3 of a session)"] = fuse_leg(
                        astrid_mount, server, args.base, big_mib, keys, runs)
                elif leg == "s3fs":
                    results["s3fs-fuse 1.90"] = fuse_leg(s3fs_mount, server, args.base,
                                                         big_mib, keys, runs)
                elif leg == "rclone":
                    results["rclone mount --use-server-modtime"] = fuse_leg(
                        rclone_mount, server, args.base, big_mib, keys, runs)
            except Exception as e:  # a missing peer must not lose the other numbers
                results[leg] = f"not available: {e}"
    finally:
        server.stop()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    section = (
        "## S3\n\n"
        f"`scripts/bench/s3.py {'--full' if args.full else '--quick'}` on {when}: "
        f"one {big_mib} MiB object, a prefix of {keys:,} keys, median of {runs} run(s), "
        "all legs against the same s3rver 3.7.1 on 127.0.0.1 (Node 20, disk-backed). "
        "Reads are 128 KiB (FUSE's size); mounts are fresh and caches dropped for the read "
        "and cold listing. The driver leg calls `astrid_fs.drivers.s3` from Python (no "
        "FUSE); its warm listing is the metadata cache (TTL). The astrid-fs leg reads "
        "through a session mounted with `astrid-fs mount --mounts` (bucket at /mnt/s3). "
        f"Load average during the run: {load:.1f}.\n\n"
        + table(results) + "\n\n"
        "Run it: `sudo .venv/bin/python scripts/bench/s3.py --full --write-md` "
        "(`--quick` for small sizes).\n"
    )
    print(section)
    if args.write_md:
        write_md(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
