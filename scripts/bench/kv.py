"""KV store latency: get/set/list p50/p99, direct and through trio.to_thread.

    .venv/bin/python scripts/bench/kv.py [--ops 2000] [--value-bytes 100]

Runs against mem:// and surrealkv:// (SURREAL_SYNC_DATA=true, fsync per
commit) in a temporary directory, and prints a Markdown table for
docs/benchmarks.md ("## KV").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio
from bench_host import add_page_reporting_flag, steady_host

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from astrid_runtime.kv import KvStore


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    """(p50, p99) in microseconds."""
    ordered = sorted(samples_ns)
    p50 = statistics.median(ordered) / 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000
    return p50, p99


def time_direct(fn: Callable[[int], object], ops: int) -> list[int]:
    samples = []
    for i in range(ops):
        start = time.perf_counter_ns()
        fn(i)
        samples.append(time.perf_counter_ns() - start)
    return samples


def time_threaded(fn: Callable[[int], object], ops: int) -> list[int]:
    samples: list[int] = []

    async def main() -> None:
        limiter = trio.CapacityLimiter(1)
        for i in range(ops):
            start = time.perf_counter_ns()
            await trio.to_thread.run_sync(fn, i, limiter=limiter)
            samples.append(time.perf_counter_ns() - start)

    trio.run(main)
    return samples


def bench_store(url: str, ops: int, value: bytes) -> list[tuple[str, str, float, float]]:
    rows = []
    with KvStore(url) as kv:
        # Warm up and populate: gets hit existing keys.
        for i in range(ops):
            kv.set("bench", f"k{i:08}", value)
        cases: list[tuple[str, Callable[[int], object]]] = [
            ("set", lambda i: kv.set("bench", f"k{i:08}", value)),
            ("get", lambda i: kv.get("bench", f"k{i:08}")),
            ("get (missing)", lambda i: kv.get("bench", f"missing{i}")),
            (
                "delete+set",
                lambda i: (kv.delete("bench", f"k{i:08}"), kv.set("bench", f"k{i:08}", value)),
            ),
            ("list 100 keys", lambda i: kv.list("bench", f"k{i % (ops // 100):06}", 100)),
        ]
        for name, fn in cases:
            p50, p99 = percentiles(time_direct(fn, ops))
            rows.append((name, "direct", p50, p99))
            p50, p99 = percentiles(time_threaded(fn, ops))
            rows.append((name, "trio.to_thread", p50, p99))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--value-bytes", type=int, default=100)
    add_page_reporting_flag(parser)
    args = parser.parse_args()
    with steady_host(args.keep_page_reporting) as host:
        print(host, flush=True)
        run(args)


def run(args: argparse.Namespace) -> None:
    value = os.urandom(args.value_bytes)
    print(f"{args.ops} ops per row, {args.value_bytes}-byte values, one thread at a time\n")
    print("| engine | operation | path | p50 µs | p99 µs |")
    print("|---|---|---|---:|---:|")
    with tempfile.TemporaryDirectory(dir=os.environ.get("ASTRID_BENCH_DIR")) as tmp:
        for label, url in (("mem://", "mem://"), ("surrealkv:// (sync)", f"surrealkv://{tmp}/kv")):
            for name, path, p50, p99 in bench_store(url, args.ops, value):
                print(f"| {label} | {name} | {path} | {p50:.0f} | {p99:.0f} |", flush=True)


if __name__ == "__main__":
    main()
