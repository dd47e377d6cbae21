"""Test doubles and helpers shared by the kernel tests and benchmarks."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from wasmtime.component import Component

from astrid_runtime.grants import Grants, Limits
from astrid_runtime.kernel import Kernel
from astrid_runtime.supervisor import PluginSpec, State, Supervisor


class MemoryKv:
    """An in-memory stand-in with the `astrid_runtime.kv.KvStore` interface."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def get(self, plugin: str, key: str) -> bytes | None:
        with self._lock:
            return self._data.get((plugin, key))

    def set(self, plugin: str, key: str, value: bytes) -> None:
        with self._lock:
            self._data[(plugin, key)] = bytes(value)

    def delete(self, plugin: str, key: str) -> bool:
        with self._lock:
            return self._data.pop((plugin, key), None) is not None

    def list(self, plugin: str, prefix: str, limit: int = 1000) -> list[str]:
        with self._lock:
            keys = sorted(k for (p, k) in self._data if p == plugin and k.startswith(prefix))
        return keys[:limit]


ECHO_GRANTS = Grants(publish=("echo.>",), subscribe=("echo.>",), kv=True)
FAST_RESTART = Limits(backoff_initial_s=0.001, backoff_max_s=0.01, call_timeout_ms=200,
                      memory_bytes=64 * 1024 * 1024)


def spec(components: dict[str, Component], kind: str, name: str | None = None, *,
         config: str = "", grants: Grants = ECHO_GRANTS, limits: Limits | None = None
         ) -> PluginSpec:
    """A PluginSpec for a test component."""
    return PluginSpec(name or kind, "0.0.0", components[kind], config, grants,
                      limits or Limits())


async def running(kernel: Kernel, plugin_spec: PluginSpec) -> Supervisor:
    """Start a plugin and return once it serves (fails the test if it was disabled)."""
    sup = kernel.start(plugin_spec)
    await sup.wait_for(lambda s: s.state in (State.RUNNING, State.DISABLED))
    assert sup.state is State.RUNNING, sup.last_error
    return sup


def write_plugin(root: Path, name: str, component: Path, *, config: str = "",
                 publish: tuple[str, ...] = (), subscribe: tuple[str, ...] = (),
                 kv: bool = False, extra: str = "") -> Path:
    """A plugin directory: plugin.toml plus a copy of `component`; returns the dir."""
    plugin = root / name
    plugin.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(component, plugin / f"{name}.wasm")
    quoted = lambda items: ", ".join(f'"{i}"' for i in items)  # noqa: E731
    (plugin / "plugin.toml").write_text(
        f'name = "{name}"\nversion = "1.0.0"\ncomponent = "{name}.wasm"\n'
        f'config = "{config}"\n\n[capabilities]\npublish = [{quoted(publish)}]\n'
        f'subscribe = [{quoted(subscribe)}]\nkv = {"true" if kv else "false"}\n{extra}')
    return plugin


class ExpectedLogs:
    """Kernel log events a test expects at WARNING or above (see `kernel_log_check`)."""

    def __init__(self) -> None:
        self.events: set[str] = set()

    def allow(self, *events: str) -> None:
        self.events.update(events)


def install(lock_path: Path, plugin_dir: Path) -> None:
    """Pin `plugin_dir` in `lock_path` as `astrid plugin install` would (grants what it asks)."""
    from astrid_runtime.lockfile import entry_for, load_lockfile
    from astrid_runtime.manifest import load_manifest

    manifest = load_manifest(plugin_dir)
    lock = load_lockfile(lock_path)
    lock.with_entry(entry_for(manifest, manifest.component.read_bytes())).save()
