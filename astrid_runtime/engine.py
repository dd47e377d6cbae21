"""One wasmtime Engine per kernel, and the authenticated compile cache in front of it.

The engine is configured once (epoch interruption always on, fuel metering
on by default) and shared by every plugin: wasmtime compiles a component for
an engine, and a Store belongs to one engine.

Compiling a componentize-py component takes seconds; deserializing the
compiled artifact takes milliseconds. But a compiled artifact is native
code that wasmtime maps and runs without re-validating it, so the cache is
part of what the kernel trusts and is guarded like the lockfile:

- Each entry is keyed by the component's blake3 (the pin), the wasmtime
  version and the engine settings, and carries a MAC, under a key derived
  from the kernel secret (identity.py), over that key and the artifact's
  bytes: `artifact || MAC || CACHE_MAGIC` (the seal trails the artifact, so
  wasmtime can map the file as it is: it reads the ELF image its header
  describes and ignores what follows). An entry is opened once; its MAC is
  checked over that open file, and wasmtime maps that same file (through
  `/proc/self/fd`, so a rename in between cannot substitute another): an
  artifact written under another component's key, edited machine code, or
  an entry from another kernel fails the MAC. (Writing into the verified
  file in place, between the check and the map, needs the kernel's own
  uid, which can read the kernel key anyway.)
- Mapped, not copied: the code of a Python plugin's CPython is ~40 MiB, of
  which a plugin touches a fraction; the pages it never runs stay out of the
  kernel's RSS, and the ones it does are page cache, not private memory
  (docs/kernel.md, Memory).
- One `Component` per pinned hash while any instance holds it: compiling
  a component already loaded in this engine returns the same one.
- The cache directory must be the kernel's own: owned by the kernel's user,
  not writable by group or others, not a symlink. Otherwise it is not used
  at all (every boot compiles) and the reason is reported.
- A rejected entry is deleted and the component recompiled from the
  verified `.wasm`; `CompileResult.cache_note` says why, for the kernel log.
- Processes sharing a cache compile an entry once: a miss takes an exclusive
  lock on that entry (`flock` of `.KEY.lock` beside it), looks again, and only
  then compiles; the others wait and load what it wrote (a kernel booting
  while `astrid plugin install` precompiles the same pin).

Blocking: `compile` hashes and compiles; call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import mmap
import os
import stat
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import blake3
import wasmtime
from wasmtime.component import Component

from astrid_runtime.atomic import write_atomic
from astrid_runtime.errors import CompileError
from astrid_runtime.identity import CACHE_MAC_CONTEXT, derive, load_or_create_key

WASMTIME_VERSION = version("wasmtime")
#: Trailer of a cache entry: wasmtime's artifact, then the 32-byte MAC, then this magic.
CACHE_MAGIC = b"ASTRIDC2"
_MAC_BYTES = 32
_TRAILER = _MAC_BYTES + len(CACHE_MAGIC)


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
    #: Why the cache was not used, when an entry was rejected or the directory refused.
    cache_note: str | None = None


def check_cache_dir(path: Path) -> str | None:
    """Create `path` (0700) if missing; None when it is the kernel's own, else why not."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"compile cache {path}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"compile cache {path} is not a directory (a symlink?)"
    if st.st_uid != os.geteuid():
        return f"compile cache {path} is owned by uid {st.st_uid}, not the kernel's"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"compile cache {path} is writable by others "
                f"(mode {stat.S_IMODE(st.st_mode):o}); chmod go-w it")
    return None


class KernelEngine:
    """The process's wasmtime Engine plus an optional, authenticated on-disk compile cache.

    `cache_secret` is the kernel secret the cache MAC key is derived from;
    without one, the secret of the home that holds `cache_dir`
    (`cache_dir/../kernel.key`) is used, created if missing.
    """

    def __init__(self, settings: EngineSettings | None = None, cache_dir: Path | None = None,
                 epoch_tick_ms: int = 10, cache_secret: bytes | None = None):
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
        #: Why the cache directory is not used (None: it is used, or there is none).
        self.cache_refused: str | None = None
        self._mac_key = b""
        #: Components loaded in this engine by digest, while something holds them.
        self._loaded: weakref.WeakValueDictionary[str, Component] = (
            weakref.WeakValueDictionary())
        if cache_dir is not None:
            self.cache_refused = check_cache_dir(cache_dir)
            if cache_secret is None:
                cache_secret = load_or_create_key(cache_dir.resolve().parent)
            self._mac_key = derive(cache_secret, CACHE_MAC_CONTEXT)

    def cache_key(self, component_digest: str) -> str:
        """Cache file stem for a component: blake3 of (component digest, engine fingerprint)."""
        material = f"{component_digest}\n{self.settings.fingerprint()}".encode()
        return blake3.blake3(material).hexdigest()

    def cache_path(self, component_digest: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.cache_key(component_digest)}.cwasm"

    def _mac(self, key: str, artifact: bytes | memoryview) -> bytes:
        hasher = blake3.blake3(key=self._mac_key)
        hasher.update(CACHE_MAGIC + key.encode() + b"\n")
        hasher.update(artifact)
        return hasher.digest()

    def seal(self, component_digest: str, artifact: bytes) -> bytes:
        """A cache entry for `artifact` (wasmtime's serialized component)."""
        key = self.cache_key(component_digest)
        return artifact + self._mac(key, artifact) + CACHE_MAGIC

    def unseal(self, component_digest: str, entry: bytes | memoryview) -> bytes | None:
        """The artifact inside a cache entry, or None when its MAC does not verify."""
        artifact = self._verified(component_digest, memoryview(entry))
        return None if artifact is None else bytes(artifact)

    def _verified(self, component_digest: str, entry: memoryview) -> memoryview | None:
        if len(entry) < _TRAILER or entry[-len(CACHE_MAGIC):] != CACHE_MAGIC:
            return None
        artifact, mac = entry[:-_TRAILER], entry[-_TRAILER:-len(CACHE_MAGIC)]
        expected = self._mac(self.cache_key(component_digest), artifact)
        return artifact if hmac.compare_digest(mac, expected) else None

    def _load_cached(self, path: Path,
                     component_digest: str) -> tuple[Component | None, str | None]:
        """A component from a verified cache entry, or (None, why it was rejected)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, None
        except OSError as e:
            return None, f"cache entry {path.name} unreadable ({e.strerror}); recompiled"
        try:
            note = self._check_open_entry(fd, path, component_digest)
            if note is None:
                try:  # the very file just verified, mapped by wasmtime
                    return Component.deserialize_file(self.engine, f"/proc/self/fd/{fd}"), None
                except wasmtime.WasmtimeError:
                    # Sealed by this kernel but from another wasmtime build: recompile.
                    note = f"cache entry {path.name} refused by wasmtime; recompiled"
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        return None, note

    def _check_open_entry(self, fd: int, path: Path, component_digest: str) -> str | None:
        """None when the open entry's MAC verifies, else why it is rejected."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < _TRAILER:
            return f"cache entry {path.name} is not a sealed artifact; recompiled"
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
            view = memoryview(mapped)
            try:
                ok = self._verified(component_digest, view) is not None
            finally:
                view.release()
        if ok:
            return None
        return (f"cache entry {path.name} failed its MAC (altered, or not written by "
                "this kernel for this component); recompiled from the verified .wasm")

    def compile(self, wasm: bytes, component_digest: str | None = None) -> CompileResult:
        """Compile (or load from the cache) a component whose bytes were already verified.

        Raises `CompileError` with wasmtime's reason when the bytes are not a
        valid component.
        """
        component_digest = component_digest or digest(wasm)
        loaded = self._loaded.get(component_digest)
        if loaded is not None:
            return CompileResult(loaded, True)
        path = self.cache_path(component_digest) if self.cache_refused is None else None
        if path is None:
            return self._compile(wasm, component_digest, None, self.cache_refused)
        cached, note = self._load_cached(path, component_digest)
        if cached is None:
            with _entry_lock(path):  # another process may be compiling it: wait, look again
                cached, again = self._load_cached(path, component_digest)
                if cached is None:
                    return self._compile(wasm, component_digest, path, note or again)
        self._loaded[component_digest] = cached
        return CompileResult(cached, True)

    def _compile(self, wasm: bytes, component_digest: str, path: Path | None,
                 note: str | None) -> CompileResult:
        try:
            component = Component(self.engine, wasm)
        except wasmtime.WasmtimeError as e:
            raise CompileError(f"not a valid component: {_first_line(str(e))}") from e
        if path is not None:
            write_atomic(path, self.seal(component_digest, bytes(component.serialize())))
        self._loaded[component_digest] = component
        return CompileResult(component, False, note)

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


@contextlib.contextmanager
def _entry_lock(entry: Path) -> Iterator[None]:
    """Hold `entry`'s compile against other processes sharing the cache directory
    (`flock`, released when the lock file closes, also if the process dies). A cache
    directory that refuses the lock file compiles unlocked: the entry is written
    atomically either way, a race only costs a second compile."""
    try:
        fd = os.open(entry.with_name(f".{entry.stem}.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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

