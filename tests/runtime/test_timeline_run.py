"""`astrid run`'s recorder start (issue 15): the bus recorded on the session's
timeline, in the run's home; another kernel holding that recording leaves the
run unrecorded with one line on stderr, never a failed start. (The whole run
through the CLI: tests/e2e/test_recorded_run.py.)"""

from __future__ import annotations

import io
from pathlib import Path

import trio

from astrid_runtime.approval.policy import Policy
from astrid_runtime.kernel import Kernel
from astrid_runtime.recorder.store import RecordingStore, default_url
from astrid_runtime.session_kernel import RunOptions, _start_recording


def options(home: Path, *, record: bool = True) -> RunOptions:
    return RunOptions(home, home / "lower", "s1", home / "mnt", home / "plugins.lock",
                      Policy(), None, 1.0, False, None, record)


async def test_a_run_records_into_its_home(kernel: Kernel, tmp_path: Path) -> None:
    err = io.StringIO()
    await _start_recording(kernel, options(tmp_path), err)
    assert kernel.bus.on_record is not None
    assert err.getvalue() == ""
    kernel.publish("x", b"1")
    reply = await kernel.control_ops["recording.query"]({})
    assert [(e["topic"], e["sender"]) for e in reply["events"]] == [("x", "client")]
    assert (tmp_path / "recording").is_dir()


async def test_a_run_beside_a_recording_kernel_runs_unrecorded(
        kernel: Kernel, tmp_path: Path) -> None:
    held = await trio.to_thread.run_sync(RecordingStore, default_url(tmp_path))
    try:
        err = io.StringIO()
        await _start_recording(kernel, options(tmp_path), err)
        assert kernel.bus.on_record is None
        assert err.getvalue().startswith("astrid: not recording: the recording at ")
        assert err.getvalue().count("\n") == 1
        kernel.publish("x", b"1")  # the kernel runs on
    finally:
        held.close()


async def test_no_record_starts_no_recorder(kernel: Kernel, tmp_path: Path) -> None:
    await _start_recording(kernel, options(tmp_path, record=False), io.StringIO())
    assert kernel.bus.on_record is None
    assert "recording.query" not in kernel.control_ops
    assert not (tmp_path / "recording").exists()
