"""Fixtures for the kernel tests: real components, a real engine, a kernel.

Components are built from `components/` sources (cached by content, see
`components/testcomponents.py`) and compiled once per session.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from wasmtime.component import Component

from astrid_runtime.engine import KernelEngine
from astrid_runtime.kernel import Kernel, open_kernel

sys.path.insert(0, str(Path(__file__).parent / "components"))
import testcomponents
from testkit import ExpectedLogs, MemoryKv


@pytest.fixture(scope="session")
def engine() -> KernelEngine:
    # The compile cache persists next to the built components (git-ignored), so
    # a second test run deserializes the 18 MiB Python component in ms; it is also
    # the template home's cache (tests/support/warmhome.py): one compile per pin.
    return KernelEngine(cache_dir=testcomponents.BUILD / "cache", epoch_tick_ms=5)


@pytest.fixture(scope="session")
def component_paths() -> dict[str, Path]:
    return {
        "pyecho": testcomponents.build_python("pyecho"),
        "hostile": testcomponents.build_wat("hostile"),
        "relay": testcomponents.build_wat("relay"),
        "wrong": testcomponents.build_wrong_world(),
    }


@pytest.fixture(scope="session")
def components(engine: KernelEngine, component_paths: dict[str, Path]) -> dict[str, Component]:
    return {name: engine.compile(path.read_bytes()).component
            for name, path in component_paths.items()}


@pytest.fixture
def kv() -> MemoryKv:
    return MemoryKv()


@pytest.fixture
async def kernel(engine: KernelEngine, kv: MemoryKv) -> AsyncIterator[Kernel]:
    async with open_kernel(engine, kv, guest_threads=2) as k:
        yield k


@pytest.fixture(autouse=True)
def expect_logs(caplog: pytest.LogCaptureFixture) -> Iterator[ExpectedLogs]:
    """Fail a test whose kernel logged an unexpected WARNING or ERROR.

    A test that provokes one on purpose says so: `expect_logs.allow("plugin.crashed")`.
    Only the kernel's own loggers (`astrid.kernel`, `astrid.plugin.*`) are checked.
    """
    expected = ExpectedLogs()
    yield expected
    unexpected = [
        f"{r.name}: {r.getMessage()}" for r in caplog.get_records("call")
        if r.levelno >= logging.WARNING and r.name.startswith(("astrid.kernel", "astrid.plugin"))
        and r.getMessage() not in expected.events
    ]
    assert not unexpected, f"unexpected kernel warnings: {unexpected}"
