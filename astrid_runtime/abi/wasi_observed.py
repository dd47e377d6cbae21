"""WASI clocks and randomness through our own host functions, when a plugin is recorded.

wasmtime's WASI answers `wall-clock` and `random` in Rust, where the recorder
cannot see them. With a `CallObserver` (recorder/, replay) the plugin's linker
defines these interfaces itself (and `random/insecure`, `random/insecure-seed`),
whole (shadowing replaces an instance, not one function), so their calls pass
`HostFuncs.tap` like every host call: recorded, and answered from the
recording in a replay. `monotonic-clock` stays wasmtime's (its pollables
belong to wasi:io). Without an observer nothing here is used (wasmtime's
are faster).

Definitions are at `WASI_VERSION`; wasmtime's linker matches semver-compatible
imports (a guest of any wasi 0.2.x gets these).
"""

from __future__ import annotations

import os
import time

from wasmtime.component import LinkerInstance

from astrid_runtime.abi.canon import BYTES, U32, U64, TupleCodec
from astrid_runtime.abi.hostfunc import HostFuncs, Signature
from astrid_runtime.abi.resource import RecordCodec

WASI_VERSION = "0.2.9"
#: Largest `get-random-bytes` answered (WASI leaves the bound to the host).
MAX_RANDOM_BYTES = 1 << 20

DATETIME = RecordCodec((("seconds", U64), ("nanoseconds", U32)))


def _wall_now() -> tuple[int, int]:
    ns = time.time_ns()
    return ns // 1_000_000_000, ns % 1_000_000_000


def _wall_resolution() -> tuple[int, int]:
    return 0, 1


def _random_bytes(n: int) -> bytes:
    return os.urandom(min(n, MAX_RANDOM_BYTES))


def _random_u64() -> int:
    return int.from_bytes(os.urandom(8), "little")


def _insecure_seed() -> tuple[int, int]:
    return _random_u64(), _random_u64()


def define(funcs: HostFuncs, root: LinkerInstance) -> None:
    """Define the observed WASI functions on `root` (the linker must allow shadowing)."""
    table = (
        ("wasi:clocks/wall-clock", "wall-clock",
         (("now", Signature((), DATETIME), _wall_now),
          ("resolution", Signature((), DATETIME), _wall_resolution))),
        ("wasi:random/random", "random",
         (("get-random-bytes", Signature((U64,), BYTES), _random_bytes),
          ("get-random-u64", Signature((), U64), _random_u64))),
        ("wasi:random/insecure", "insecure",
         (("get-insecure-random-bytes", Signature((U64,), BYTES), _random_bytes),
          ("get-insecure-random-u64", Signature((), U64), _random_u64))),
        ("wasi:random/insecure-seed", "insecure-seed",
         (("insecure-seed", Signature((), TupleCodec(U64, U64)), _insecure_seed),)),
    )
    for interface, short, fns in table:
        funcs.interface = f"wasi:{short}"
        with root.add_instance(f"{interface}@{WASI_VERSION}") as inst:
            for name, sig, impl in fns:
                funcs.add(inst, name, sig, impl)
