"""FUSE over io_uring (native/fuse_shim.c, part 15): requests served on the
CPU that sent them.

On this project's VMs a FUSE request that wakes a daemon thread on the other
CPU costs ~35 us each way (an idle vCPU sleeps in HLT), and /dev/fuse hands
every request to whichever daemon thread waits: measured on 2026-12-02, 1,000
appends to upper files cost 100 us each through /dev/fuse and 30 us with the
client and the daemon pinned to one CPU. Over io_uring (Linux 6.14+) the
kernel queues a request on the ring of its caller's CPU; the shim runs queue
threads pinned there (shim version 24: 32 / CPUs per CPU, at least one and at
most 8; ASTRID_FS_RING_THREADS=N asks for N per CPU), which answer in C what
needs only the fd table (READs, WRITEs, the xattr probes) or part 12's tables
(LOOKUPs and listings in lower-only directories) and forward the rest to
pyfuse3's trio thread unchanged, so every other part and every handler sees
the requests as before. Several threads per CPU, so that a request waiting on
the disk holds back no other: 8 threads reading 20,000 cold files took 4.3
times native's time with one thread per CPU, 1.2-1.4 times with eight (8 `cat`
processes: 4.2 and 1.7 times; benchmarks.md, "Requests that wait").

The kernel offers it only while `/sys/module/fuse/parameters/enable_uring`
is Y. That switch only lets FUSE servers ask; it changes nothing for a server
that does not. A root daemon asked for io_uring sets it (and says so in its
log); anyone else gets /dev/fuse, with the reason in `astrid-fs status`.
Mounts ask for it by default (fuse/config.py `io_uring_requested`;
`--no-io-uring` or ASTRID_FS_IO_URING=0 do not).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from astrid_fs.fuse.shim import shim_version

log = logging.getLogger("astrid_fs.fuse.io_uring")

IO_URING_VERSION = 15
#: The fuse module's switch that lets servers ask for io_uring.
ENABLE_FILE = Path("/sys/module/fuse/parameters/enable_uring")


def kernel_switch(enable_file: Path = ENABLE_FILE, *, turn_on: bool) -> str | None:
    """None when the kernel lets FUSE servers use io_uring (after turning the
    switch on if `turn_on` and allowed), else why not."""
    try:
        value = enable_file.read_text().strip()
    except OSError:
        return "this kernel has no FUSE over io_uring (Linux 6.14+, CONFIG_FUSE_IO_URING)"
    if value in ("Y", "1"):
        return None
    if not turn_on:
        return f"{enable_file} is {value}"
    try:
        enable_file.write_text("Y\n")
    except OSError as e:
        return f"{enable_file} is {value} and could not be set: {e.strerror}"
    log.info("set %s to Y (lets FUSE servers ask for io_uring)", enable_file)
    return None


class IoUring:
    """The Python side of part 15: switch it on before the mount, report it."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self._lib.astrid_ur_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
        self._lib.astrid_ur_stats.restype = None
        self._lib.astrid_ur_active.restype = ctypes.c_int

    @classmethod
    def enable(cls) -> tuple[IoUring | None, str]:
        """Ask the shim for io_uring (call before pyfuse3.init); the object,
        or None and why not."""
        if shim_version() < IO_URING_VERSION:
            return None, f"the FUSE shim is older than version {IO_URING_VERSION}"
        why = kernel_switch(turn_on=os.geteuid() == 0)
        if why is not None:
            return None, why
        ring = cls(ctypes.CDLL(None))
        ring._lib.astrid_ur_enable()
        return ring, "requested"

    def active(self) -> bool:
        """True once the INIT reply asked for io_uring and the queues run."""
        return bool(self._lib.astrid_ur_active())

    def stats(self) -> dict[str, int]:
        """Requests that came through the rings, answered by a queue thread,
        forwarded to Python, replies committed for Python, queues that failed;
        times a pinned queue thread let go of its CPU for large READs and took
        it again (shim 35; 0 before); times the queue threads were made
        SCHED_IDLE and SCHED_OTHER again as the machine's CPU pressure fell
        and rose (shim 36; their difference is 1 while they are SCHED_IDLE)."""
        out = (ctypes.c_int64 * 9)()
        self._lib.astrid_ur_stats(out)
        return {"ring_requests": int(out[0]), "ring_answered_in_c": int(out[1]),
                "ring_forwarded": int(out[2]), "ring_replies_committed": int(out[3]),
                "ring_failures": int(out[4]), "ring_loosened": int(out[5]),
                "ring_repinned": int(out[6]), "ring_turned_idle": int(out[7]),
                "ring_turned_ordinary": int(out[8])}


DEV_THREADS_VERSION = 25
#: Threads reading /dev/fuse where io_uring does not run (shim part 16):
#: none unless asked for. They let requests that wait on the disk run side by
#: side (8 threads reading 20,000 cold files: 2.9x native against 4.5x), but
#: a client's stream of requests then wakes a thread per request where the
#: drain's one spinning thread is already running (a cold stat walk: 3.3x
#: against 2.3x); benchmarks.md, "/dev/fuse read by threads".
DEV_THREADS_ENV = "ASTRID_FS_DEV_THREADS"


def dev_threads_wanted(env: Mapping[str, str]) -> int:
    """How many threads read /dev/fuse where io_uring does not run (0 to 64;
    a word that is not a number: 0)."""
    try:
        return max(0, min(64, int(env.get(DEV_THREADS_ENV, "0").strip() or "0")))
    except ValueError:
        return 0


class DevThreads:
    """The Python side of part 16: where part 15 does not run (a kernel
    without FUSE over io_uring, `--no-io-uring`), and ASTRID_FS_DEV_THREADS
    asks for them, threads in the shim read /dev/fuse and answer what a queue
    thread would, forwarding the rest to the trio thread, so requests that
    wait on the disk run side by side there too. Asked for before the mount;
    the shim starts them once INIT is answered without io_uring."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        lib.astrid_dw_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
        lib.astrid_dw_stats.restype = None
        lib.astrid_dw_active.restype = ctypes.c_int

    @classmethod
    def enable(cls) -> DevThreads | None:
        threads = dev_threads_wanted(os.environ)
        if shim_version() < DEV_THREADS_VERSION or not threads:
            return None
        lib = ctypes.CDLL(None)
        lib.astrid_dw_enable(threads)
        return cls(lib)

    def stats(self) -> dict[str, int]:
        """Threads reading /dev/fuse (0 over io_uring), requests they read,
        answered in C, forwarded to Python."""
        out = (ctypes.c_int64 * 3)()
        self._lib.astrid_dw_stats(out)
        return {"threads": int(self._lib.astrid_dw_active()), "read": int(out[0]),
                "answered_in_c": int(out[1]), "forwarded": int(out[2])}
