"""One timeline (issue 15): the recorder snapshots an astrid-fs session after each
event whose handling changed files, `astrid log` shows which files, and
`astrid-fs rollback SESSION bus-SEQ` restores the files as that event left them.
A real FUSE mount of a real session; the plugin writes through the VFS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from testkit import running, spec
from wasmtime.component import Component

from astrid_runtime.abi.context import PluginContext
from astrid_runtime.bus import Tap
from astrid_runtime.engine import KernelEngine
from astrid_runtime.grants import Grants, Limits
from astrid_runtime.kernel import Kernel
from astrid_runtime.recorder.query import answer
from astrid_runtime.recorder.recorder import recording
from astrid_runtime.recorder.replay import Target, replay
from astrid_runtime.recorder.settings import RecordingSettings
from astrid_runtime.recorder.store import RecordingStore
from astrid_runtime.recorder.timeline import Timeline
from astrid_runtime.vfs import PluginVfs

ASTRID_FS = str(Path(sys.executable).parent / "astrid-fs")
#: open-flags write | create | truncate (astrid:kernel/vfs, in WIT order from bit 0).
WRITE_CREATE_TRUNCATE = 2 | 4 | 8


class Mounted:
    def __init__(self, tmp_path: Path):
        self.home = tmp_path / "fshome"
        self.lower = tmp_path / "lower"
        self.mnt = tmp_path / "mnt"
        self.env = dict(os.environ, ASTRID_HOME=str(self.home))

    def astrid_fs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ASTRID_FS, *args], env=self.env, capture_output=True,
                              text=True, timeout=120)


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Mounted]:
    m = Mounted(tmp_path)
    m.lower.mkdir()
    m.mnt.mkdir()
    (m.lower / "notes.txt").write_text("zero")
    done = m.astrid_fs("mount", "--lower", str(m.lower), "--session", "tl", str(m.mnt))
    assert done.returncode == 0, done.stderr
    try:
        yield m
    finally:
        m.astrid_fs("umount", str(m.mnt))


def write_batch(path: str, text: str) -> bytes:
    """An `echo.fuzz` batch for pyecho: open `path` in the workspace and write `text`."""
    return json.dumps([{"fn": "vfs", "root": "workspace", "op": "open_file",
                        "args": [path, WRITE_CREATE_TRUNCATE],
                        "file_op": ["write", text]}]).encode()


async def test_files_are_restored_to_the_state_at_a_chosen_event(
        kernel: Kernel, engine: KernelEngine, components: dict[str, Component],
        mounted: Mounted, tmp_path: Path) -> None:
    def give_workspace(ctx: PluginContext) -> None:
        ctx.vfs = PluginVfs(ctx.name, ctx.grants.vfs, {"workspace": mounted.mnt})

    kernel.context_hooks.append(give_workspace)
    settings = RecordingSettings(url=f"surrealkv://{tmp_path / 'rec'}")
    async with recording(kernel, settings, tmp_path, Timeline("tl", mounted.home)) as rec:
        assert rec is not None
        grants = Grants(publish=("echo.>",), subscribe=("echo.>",), vfs=("workspace",))
        await running(kernel, spec(components, "pyecho", "echo", grants=grants))
        tap = Tap(kernel.bus, "echo.fuzz.out")
        for text in ("one", "two"):
            kernel.publish("echo.fuzz", write_batch("notes.txt", text))
            assert json.loads((await tap.receive()).payload) == ["ok"]
        kernel.publish("echo.in", b"no files")
        await rec.wait_calls(6)  # 3 messages, and pyecho hears its 3 replies on echo.>
        await rec.flush()
        events = (await trio.to_thread.run_sync(answer, rec.store, {}))["events"]
    writes = [e for e in events if e["topic"] == "echo.fuzz"]
    handled = [[c for c in e["calls"] if c["outcome"] != "init"] for e in writes]
    assert [c["wrote"] for calls in handled for c in calls] == [["notes.txt"], ["notes.txt"]]
    first, second = (e["seq"] for e in writes)
    assert [c["snapshot"] for calls in handled for c in calls] == [f"bus-{first}",
                                                                   f"bus-{second}"]
    (quiet,) = [e for e in events if e["topic"] == "echo.in"]
    assert [(c["wrote"], c["snapshot"]) for c in quiet["calls"]] == [([], None)]
    assert (mounted.mnt / "notes.txt").read_text() == "two"

    done = mounted.astrid_fs("rollback", "tl", f"bus-{first}")
    assert done.returncode == 0, done.stderr
    assert (mounted.mnt / "notes.txt").read_text() == "one"
    assert (mounted.lower / "notes.txt").read_text() == "zero"  # the project is untouched

    # The replay gets its VFS handles and answers from the recording: no files needed.
    store = RecordingStore(settings.url or "")
    try:
        chunk = store.read()
    finally:
        store.close()
    report = await replay(engine, Target("echo", components["pyecho"], "", grants, Limits()),
                          chunk.events, [c for c in chunk.calls if c.plugin == "echo"])
    assert report.identical, [str(d) for d in report.differences]
    assert [c.topic for c in report.calls if c.topic == "echo.fuzz"] == ["echo.fuzz"] * 2
