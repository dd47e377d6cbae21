"""One wasmtime Engine per kernel, and the compile cache in front of it.

The engine is configured once (epoch interruption always on, fuel metering
on by default) and shared by every plugin: wasmtime compiles a component for
an engine, and a Store belongs to one engine.

Compiling a componentize-py component takes seconds; deserializing the
compiled artifact takes milliseconds. Artifacts are cached on disk under a
key that changes whenever any input that shapes the machine code changes:
the component's blake3, the wasmtime version, and the engine settings. A
stale or corrupt cache entry is recompiled, never trusted blindly — wasmtime
itself refuses artifacts from another version or config, and we treat that
refusal as a miss.

Blocking: `compile` hashes and compiles; call it from a worker thread.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import blake3
import wasmtime
from wasmtime.component import Component

from astrid_runtime.atomic import write_atomic
from astrid_runtime.errors import CompileError

WASMTIME_VERSION = version("wasmtime")


@dataclass(frozen=True)
class EngineSettings:
    """Knobs that shape compiled code; all of them are part of the cache key."""

    consume_fuel: bool = True
    #: Guest stack limit in bytes (wasmtime's default is 512 KiB).
    max_wasm_stack: int = 512 * 1024
    cranelift_opt_level: str = "speed"

    def fingerprint(self) -> str:
        """A stable string naming this configuration and the wasmtime build."""
        return (
            f"wasmtime={WASMTIME_VERSION};fuel={int(self.consume_fuel)};epoch=1;"
            f"stack={self.max_wasm_stack};opt={self.cranelift_opt_level}"
        )


def digest(wasm: bytes) -> str:
    """The blake3 hex digest used for pins and cache keys."""
    return blake3.blake3(wasm).hexdigest()


@dataclass(frozen=True)
class CompileResult:
    component: Component
    cache_hit: bool


class KernelEngine:
    """The process's wasmtime Engine plus an optional on-disk compile cache."""

    def __init__(self, settings: EngineSettings | None = None, cache_dir: Path | None = None,
                 epoch_tick_ms: int = 10):
        self.settings = settings or EngineSettings()
        #: How often the kernel's ticker advances the epoch; deadlines are in ticks.
        self.epoch_tick_ms = epoch_tick_ms
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = self.settings.consume_fuel
        config.max_wasm_stack = self.settings.max_wasm_stack
        config.cranelift_opt_level = self.settings.cranelift_opt_level
        self.engine = wasmtime.Engine(config)
        self.cache_dir = cache_dir

    def cache_key(self, component_digest: str) -> str:
        """Cache file stem for a component: blake3 of (component digest, engine fingerprint)."""
        material = f"{component_digest}\n{self.settings.fingerprint()}".encode()
        return blake3.blake3(material).hexdigest()

    def cache_path(self, component_digest: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.cache_key(component_digest)}.cwasm"

    def compile(self, wasm: bytes, component_digest: str | None = None) -> CompileResult:
        """Compile (or load from cache) a component whose bytes were already verified.

        Raises `CompileError` with wasmtime's reason when the bytes are not a
        valid component.
        """
        component_digest = component_digest or digest(wasm)
        path = self.cache_path(component_digest)
        if path is not None and path.exists():
            try:
                return CompileResult(Component.deserialize_file(self.engine, str(path)), True)
            except wasmtime.WasmtimeError:
                # Written by another wasmtime or config, or torn: recompile below.
                with contextlib.suppress(OSError):
                    path.unlink()
        try:
            component = Component(self.engine, wasm)
        except wasmtime.WasmtimeError as e:
            raise CompileError(f"not a valid component: {_first_line(str(e))}") from e
        if path is not None:
            write_atomic(path, bytes(component.serialize()))
        return CompileResult(component, False)

    def check_plugin_world(self, component: Component) -> None:
        """Raise `CompileError` unless `component` exports the plugin world's functions."""
        exports = component.type.exports(self.engine)
        missing = [name for name in ("init", "on-message") if name not in exports]
        if missing:
            raise CompileError("not an astrid:kernel/plugin component: missing export "
                               + " and ".join(missing))

    def increment_epoch(self) -> None:
        """Advance the engine's epoch by one tick (thread-safe in wasmtime)."""
        self.engine.increment_epoch()


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    # wasmtime puts the root cause after "Caused by:"; it is the useful part.
    if "Caused by:" in lines:
        rest = lines[lines.index("Caused by:") + 1 :]
        if rest:
            return f"{lines[0]}: {rest[-1].lstrip('0123456789: ')}"
    return lines[0]

