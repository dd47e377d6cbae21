"""Kernel RSS per shipped plugin (issue 12), for `scripts/bench/kernel.py --rss`:
a kernel with an in-memory KV starts the shipped bus plugins of plugins.lock
one at a time, each from its pin and config with the compile cache warm, and
reads its own /proc/self/status after each is running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio
from testkit import MemoryKv

from astrid_runtime.engine import KernelEngine
from astrid_runtime.kernel import open_kernel
from astrid_runtime.lockfile import load_lockfile, read_verified
from astrid_runtime.manifest import load_manifest
from astrid_runtime.supervisor import PluginSpec, State

ROOT = Path(__file__).resolve().parents[2]


def _rss_mib() -> tuple[float, float, float]:
    """This process's resident memory (total, anonymous, file-backed), in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["RssAnon"], fields["RssFile"]


def bench_rss(home: Path) -> list[str]:
    """Kernel RSS before and after each shipped bus plugin starts (its pin, its config, the
    compile cache of `home` warm as after `astrid plugin install`; interceptors and link
    plugins are left out). Compiling happens in a child process, as install does."""
    lock = load_lockfile(ROOT / "plugins.lock", missing_ok=False)
    entries = [e for e in lock.entries  # link plugins need their peers: not here
               if not (m := load_manifest(e.source)).exports and not m.imports]
    warm = ("from pathlib import Path; from astrid_runtime.install import precompile; "
            "from astrid_runtime.lockfile import load_lockfile; import sys; "
            "lock = load_lockfile(Path(sys.argv[1])); "
            "[precompile(lock.get(n), Path(sys.argv[2])) for n in sys.argv[3:]]")
    subprocess.run([sys.executable, "-c", warm, str(ROOT / "plugins.lock"), str(home / "cache"),
                    *(e.name for e in entries)], check=True)
    engine = KernelEngine(cache_dir=home / "cache")
    rows = []

    async def run() -> None:
        async with open_kernel(engine, MemoryKv()) as kernel:
            before = _rss_mib()
            rows.append(f"| kernel, no plugin | {before[0]:.0f} | {before[1]:.0f} | "
                        f"{before[2]:.0f} | |")
            for entry in entries:
                wasm = read_verified(entry)
                compiled = await trio.to_thread.run_sync(engine.compile, wasm, entry.blake3)
                del wasm
                if "on-message" not in compiled.component.type.exports(engine.engine):
                    continue  # an interceptor: the approval pipeline runs it
                sup = kernel.start(PluginSpec(entry.name, entry.version, compiled.component,
                                              entry.config, entry.grants, entry.limits))
                await sup.wait_for(lambda s: s.state is not State.STARTING)
                after = _rss_mib()
                rows.append(f"| + {entry.name} ({sup.state.name.lower()}, "
                            f"cache hit {compiled.cache_hit}) | {after[0]:.0f} | "
                            f"{after[1]:.0f} | {after[2]:.0f} | +{after[0] - before[0]:.0f} |")
                before = after

    trio.run(run)
    return rows
