"""The machine's state every bench here depends on: how idle CPUs wait,
and whether freed memory goes back to the host (scripts/bench/*.py)."""

from __future__ import annotations

import argparse
import contextlib
import mmap
from collections.abc import Iterator
from pathlib import Path


def idle_policy() -> str:
    """How this machine's idle CPUs wait: a round trip between two processes costs
    the wake-up of an idle CPU, ~30 µs each way on a VM whose vCPUs halt without
    polling and ten times less with halt polling (docs/benchmarks.md, "What a round trip
    costs here"), so every FUSE ratio depends on it."""
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    driver = read("/sys/devices/system/cpu/cpuidle/current_driver") or "?"
    governor = read("/sys/devices/system/cpu/cpuidle/current_governor") or "?"
    out = f"cpuidle driver {driver}, governor {governor}"
    poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    if poll is not None:
        out += f", guest halt polling {poll} ns"
    return out


PAGE_REPORTING = Path("/sys/module/page_reporting/parameters/page_reporting_order")


@contextlib.contextmanager
def free_page_reporting_off(keep: bool = False, warm: int = 4 << 30) -> Iterator[str]:
    """Stop the guest reporting free memory to the host for the run (root;
    restored after). Reported pages are given back to the host, and the
    next touch of each costs a host fault: on this project's VMs the first
    1 GiB write after a few seconds idle took 1.4-2.9 s instead of 0.18 on
    every leg, native too (docs/benchmarks.md, "The first run of a
    round"). Reporting stops when its minimum order exceeds the largest
    free block the buddy allocator has; pages reported before are touched
    once here (up to `warm` bytes). Yields what the report says."""
    try:
        before = PAGE_REPORTING.read_text().strip()
    except OSError:
        yield "no free page reporting to the host"
        return
    if keep:
        yield f"free page reporting to the host on (order {before}, as asked)"
        return
    with open("/proc/buddyinfo") as f:
        orders = max(len(line.split()) - 4 for line in f)  # "Node 0, zone X" then counts
    try:
        PAGE_REPORTING.write_text(f"{orders}\n")
    except OSError as e:
        yield f"free page reporting to the host on (order {before}; could not stop it: {e})"
        return
    try:
        warmed = _touch_free_memory(warm)
        yield (f"free page reporting to the host off during the run (order {before} "
               f"after), {warmed / (1 << 30):.1f} GiB of free memory touched before it")
    finally:
        PAGE_REPORTING.write_text(f"{before}\n")


def _touch_free_memory(most: int) -> int:
    """Touch up to `most` bytes of free memory (at most a quarter of what is
    available) and free it again: pages already reported to the host are
    faulted back in here rather than in the first timed run (the allocator
    hands out the pages freed last first, and reported ones last)."""
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    size = min(most, avail // 4) & ~(mmap.PAGESIZE - 1)
    if size > 0:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
        mmap.mmap(-1, size, flags=flags).close()
    return size


def add_page_reporting_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-page-reporting", action="store_true",
        help="leave the guest's free page reporting to the host on (by default it is off "
             "during the run: a reported page costs a host fault when next touched, which "
             "made every first run that allocates slow)")


@contextlib.contextmanager
def steady_host(keep: bool) -> Iterator[str]:
    """`free_page_reporting_off` for a bench's whole run; yields one line for
    its report (the page reporting and the idle policy)."""
    with free_page_reporting_off(keep) as said:
        yield f"host: {said}; idle CPUs: {idle_policy()}"
