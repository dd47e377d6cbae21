"""Locating and detecting the FUSE reply shim (native/fuse_shim.c).

The shim is built by scripts/setup.sh with the system C compiler and is
optional: without it the daemon still works, but directory listings are not
cached by the kernel (slower warm `find`, `ls -R`, `git status`).

`ASTRID_FS_SHIM=/path/to/lib.so` preloads another build instead (a shim
being developed, without touching the one every mount uses).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from astrid_fs.fuse.mountinfo import mount_device

SHIM = Path(__file__).with_name("native") / "libastrid_fuse_shim.so"
FH_CACHE_DIR = 1 << 63
FH_KEEP_CACHE = 1 << 62
FH_INODE = 1 << 61  # "no_open" I/O: the handle is this bit | the inode
FH_FLAG_MASK = FH_CACHE_DIR | FH_KEEP_CACHE
# Passthrough (shim version 6): the daemon's OPEN / CREATE answer is this bit
# | the inode; the shim turns it into the reply its table says.
FH_OPEN_REPLY = 1 << 59
SHIM_ENV = "ASTRID_FS_SHIM"


def shim_path() -> Path | None:
    """The built shim, if it is there and newer than its source (or the
    build `ASTRID_FS_SHIM` names)."""
    override = os.environ.get(SHIM_ENV)
    if override:
        return Path(override) if Path(override).is_file() else None
    if SHIM.is_file() and not _older_than_source():
        return SHIM
    return None


def _older_than_source() -> bool:
    """The built shim (which exists) is older than fuse_shim.c beside it."""
    source = SHIM.with_name("fuse_shim.c")
    return source.exists() and SHIM.stat().st_mtime < source.stat().st_mtime


def shim_stale() -> str | None:
    """Why the built shim is not used although it is there, or None: it is
    older than its source (edited, not rebuilt). Mounts then run without it,
    slower, so the mount command warns (`ASTRID_FS_SHIM` overrides)."""
    if os.environ.get(SHIM_ENV) or not SHIM.is_file() or not _older_than_source():
        return None
    return (f"{SHIM} is older than fuse_shim.c: mounting without the FUSE shim "
            "(rebuild it: bash scripts/setup.sh)")


def shim_version() -> int:
    """0 without the shim; 1: cached listings; 2: also no-open file I/O;
    3: no-opendir; 4: xattrs answered in C; 5: LSEEK, FALLOCATE and
    COPY_FILE_RANGE forwarded to callbacks (extra_ops.py); 6: FUSE
    passthrough on request (passthrough.py); 7: WRITEs of upper files
    answered in C (write_table.py); 8: requests C answers drained inside the
    receive call (write_table.py); 9: READs answered (and drained) in C too
    (write_table.py); 10: suid/sgid killed by the daemon, no capability probe
    per write (killpriv.py); 11: with passthrough, the table's OPENs and
    RELEASEs answered in the drain and the shim's lookups priming it
    (passthrough.py); 12: a file's first WRITE prepared by a callback and
    answered in C (first_write.py); 13: its first READ too; 14: with
    passthrough, an OPEN the table cannot answer decided by a callback inside
    the drain (passthrough.py `decide`); 15: FUSE over io_uring on request,
    pinned queue threads, one per CPU (io_uring.py); 16: suid/sgid killed by the
    daemon on passthrough mounts too, backings registered without CAP_FSETID
    (killpriv.py); 17: GETATTRs of what part 12 found answered in C
    (lookup_table.py); 18: the drain's wait for the next request spins
    first (write_table.py); 19: part 12 lets its lock go for the lstat (two
    queue threads stat side by side), queue threads answer GETATTRs too and
    run under SCHED_IDLE (io_uring.py); 20: with passthrough over io_uring,
    queue threads answer the OPENs and RELEASEs the table answers
    (passthrough.py, io_uring.py); 21: queue threads open the lower files part
    12 found for their first READs, and IOCTLs are answered ENOTTY in C;
    22: the daemon's full listings count down the shim's count
    (`astrid_lk_full_take`, lookup_table.py); 23: queue threads under
    SCHED_OTHER unless ASTRID_FS_RING_IDLE=1 (io_uring.py); 24: several queue
    threads per CPU (ASTRID_FS_RING_THREADS), and part 9's lock a
    reader-writer lock, so reads that wait on the disk run side by side
    (io_uring.py); 25: threads reading /dev/fuse where io_uring does not
    run (ASTRID_FS_DEV_THREADS; io_uring.py `DevThreads`); 26: a decided
    OPEN's reply is passthrough only where no daemon-path open went out
    meanwhile, and live passthrough opens keep their backing (passthrough.py);
    27: over /dev/fuse, a READ that would wait on the disk while other
    requests wait goes to reader threads (ASTRID_FS_READ_THREADS;
    write_table.py); 28: layer files read ahead of a sequential reader
    (`read_aheads` in write_table.py's stats); 29: read ahead by a thread
    through the kernel's own read-ahead (large folios), not
    POSIX_FADV_WILLNEED; 30: GETATTRs of directories with an upper directory
    answered in C once the daemon has answered one (lookup_table.py
    `upper_dir_answered`); 31: LOOKUPs of names such a directory does not
    show answered in C (negative entries), LISTXATTRs of entries part 12
    knows that have no xattrs, and setting or removing an ACL or a label
    refused in C; 32: SETATTRs of the mode and times of upper files with a
    read-write fd in part 9's table done and answered in C (part 20); 33:
    COPY_FILE_RANGE between files part 9's table holds made in C (part
    21); 34: CREATEs in a session's directories the kernel holds no listing
    of made in C, and RELEASEs of handle 0 answered there (part 22,
    create_table.py); 35: buffers the kernel copies file data into are
    page-aligned where the data starts (a READ's pread, a WRITE's data);
    36: queue threads SCHED_IDLE while the machine's CPU pressure is low,
    SCHED_OTHER while tasks wait for a CPU (io_uring.py)."""
    try:
        probe = ctypes.CDLL(None).astrid_fuse_shim_loaded
    except AttributeError:
        return 0
    return int(probe())


def shim_active() -> bool:
    """True if this process was started with the shim preloaded."""
    return shim_version() > 0


def env_with_shim(env: dict[str, str]) -> dict[str, str]:
    """`env` plus LD_PRELOAD of the shim (when built); any other build of
    the shim already in LD_PRELOAD is replaced (two would clash)."""
    path = shim_path()
    if path is None:
        return env
    others = [p for p in env.get("LD_PRELOAD", "").split(":")
              if p and p != str(path) and p != str(SHIM)]
    return {**env, "LD_PRELOAD": ":".join([str(path), *others])}


# glibc (2.35 and later; older ones ignore it) madvises its large allocations
# for transparent huge pages. A remote file's read-ahead fetches windows of up
# to 16 MiB into new buffers that the block cache keeps (256 MiB by default):
# with 4 KiB pages every page of them is a fault, zeroing and a memcg charge,
# a fifth of the daemon's CPU in `perf` of a 256 MiB S3 read; on this 2-CPU
# host the daemon then takes CPU the server needs. Measured (four interleaved
# rounds, s3rver, 2026-12-03): 180-248 MB/s without, 277-308 MB/s with.
HUGE_PAGE_MALLOC = "glibc.malloc.hugetlb=1"


def daemon_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The mount daemon's environment: the shim preloaded, and glibc's
    malloc on transparent huge pages (`HUGE_PAGE_MALLOC`) unless the caller's
    GLIBC_TUNABLES already says how."""
    env = env_with_shim(dict(os.environ) if env is None else env)
    tunables = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb=" not in tunables:
        env["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGE_MALLOC}" if tunables \
            else HUGE_PAGE_MALLOC
    return env


# The read-ahead a mount asks for (shim part 7). 1 MiB is also the largest
# FUSE request (libfuse negotiates max_pages = 256), so a sequential reader
# reaches the daemon in requests 8x fewer than the kernel's 128 KiB default,
# and a remote file's read-ahead sees large, early reads (docs/benchmarks.md).
READ_AHEAD_KIB = 1024


def request_read_ahead(mountpoint: str, kib: int = READ_AHEAD_KIB) -> bool:
    """Ask the shim to raise the mount's read-ahead to `kib` once INIT is
    answered; call between mounting and serving. False when it cannot (no
    shim, an older shim, no mount found); the kernel's 128 KiB stays."""
    try:
        setter = ctypes.CDLL(None).astrid_fuse_set_read_ahead
    except AttributeError:
        return False
    device = mount_device(mountpoint)
    if device is None:
        return False
    setter.argtypes = [ctypes.c_char_p, ctypes.c_uint]
    return int(setter(f"/sys/class/bdi/{device}/read_ahead_kb".encode(), kib)) == 0


# Name-only READDIRPLUS entries (shim part 11): an entry with this generation
# goes to the kernel with nodeid 0, i.e. listed, no dentry, no lookup to count.
GEN_NAME_ONLY = (1 << 64) - 1


def name_only_dirents() -> bool:
    """True if the preloaded shim turns GEN_NAME_ONLY entries into nodeid 0
    (without it such an entry would hand the kernel an inode it never
    counted: never send one then)."""
    try:
        ctypes.CDLL(None).astrid_fuse_name_only_dirents  # noqa: B018
    except AttributeError:
        return False
    return True
