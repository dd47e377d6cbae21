"""The recording of a real astridd (issue 15): `astrid log` / `show` / `replay` against
a running kernel and after a kill -9, which keeps everything up to the last
durable event. Synchronisation by the daemon's log lines and the kernel's
`recording.sync` answer, never by sleeping."""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from recordkit import relay_variant
from testkit import write_plugin

from astrid_runtime.control import ControlClient

BIN = Path(sys.executable).parent


class Kernel:
    def __init__(self, tmp_path: Path, relay: Path):
        self.config = tmp_path / "astridd.toml"
        self.socket = tmp_path / "home" / "astridd.sock"
        self.proc = subprocess.Popen([str(BIN / "astridd"), "--config", str(self.config)],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.wait_event("plugin.running")  # the relay has subscribed

    def wait_event(self, event: str) -> dict[str, Any]:
        assert self.proc.stderr is not None
        seen = []
        for raw in iter(self.proc.stderr.readline, b""):
            record = json.loads(raw)
            seen.append(record)
            if record.get("event") == event:
                return record
        raise AssertionError(f"astridd exited before {event}: {seen}")

    def publish(self, topic: str, payload: bytes) -> None:
        ControlClient(self.socket).request({"op": "publish", "topic": topic,
                                            "payload": base64.b64encode(payload).decode()})

    def astrid(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "astrid"), "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=120)


@pytest.fixture
def setup(tmp_path: Path, component_paths: dict[str, Path]) -> Iterator[tuple[Path, Path]]:
    relay = write_plugin(tmp_path / "plugins", "relay", component_paths["relay"],
                         config="demo", publish=("demo.>",), subscribe=("demo",))
    lock = tmp_path / "plugins.lock"
    done = subprocess.run([str(BIN / "astrid"), "--lockfile", str(lock), "plugin", "install",
                           "--allow-wildcards", str(relay)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (tmp_path / "astridd.toml").write_text(
        f'home = "{tmp_path / "home"}"\nlockfile = "plugins.lock"\nkv = "none"\n')
    yield tmp_path, relay


def test_log_show_and_replay_survive_kill_9(setup: tuple[Path, Path]) -> None:
    tmp_path, relay = setup
    kernel = Kernel(tmp_path, relay)
    try:
        for n in range(20):
            kernel.publish("demo", f"m{n}".encode())
        durable = ControlClient(kernel.socket).request({"op": "recording.sync"})["durable_seq"]
        assert durable >= 20
        live = kernel.astrid("log", "demo", "--limit", "0", "--json")
        assert live.returncode == 0, live.stderr
        assert len(live.stdout.splitlines()) == 20
        for n in range(5):  # maybe durable, maybe not: the kill decides
            kernel.publish("demo", f"late{n}".encode())
        # The store lives in a writer process (recorder/writer.py), not the kernel.
        status = ControlClient(kernel.socket).request({"op": "status"})["status"]
        writer = status["recording"]["writer_pid"]
        assert writer != kernel.proc.pid
        writer_fd = os.pidfd_open(writer)
    finally:
        kernel.proc.kill()  # SIGKILL: no flush, no close
        kernel.proc.wait()
    # The writer stores what the kernel had sent, sees end of file and exits by itself.
    try:
        assert select.select([writer_fd], [], [], 60)[0], "the writer outlived its kernel"
    finally:
        os.close(writer_fd)
    logged = kernel.astrid("log", "--limit", "0", "--json")
    assert logged.returncode == 0, logged.stderr
    events = [json.loads(line) for line in logged.stdout.splitlines()]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)) and seqs[0] == 1
    assert set(range(1, durable + 1)) <= set(seqs)
    inputs = [e for e in events if e["topic"] == "demo"]
    assert [base64.b64decode(e["payload"]) for e in inputs[:20]] == [
        f"m{n}".encode() for n in range(20)]
    assert all(e["sender"] == "client" and e["to"] == ["relay"] for e in inputs)

    text = kernel.astrid("log", "demo", "--since", "-3600", "--limit", "2")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 2 and all(" demo client -> relay " in line for line in lines)

    shown = kernel.astrid("show", "1")
    assert shown.returncode == 0, shown.stderr
    assert "bus.publish('demo.r', 'm0') -> {'ok': None}" in shown.stdout

    only = kernel.astrid("log", "demo.r", "--plugin", "relay", "--from", "1", "--to",
                         str(durable), "--json")
    assert {json.loads(line)["topic"] for line in only.stdout.splitlines()} <= {"demo.r"}

    replayed = kernel.astrid("replay", "relay", "--json")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    report = json.loads(replayed.stdout)
    assert report["identical"] and report["replayed"] >= 20

    new_build = tmp_path / "relay-x.wasm"
    new_build.write_bytes(relay_variant(tmp_path))
    changed = kernel.astrid("replay", "relay", "--wasm", str(new_build), "--to", "3")
    assert changed.returncode == 4, changed.stdout + changed.stderr
    assert "host call 1 (bus.publish): recorded ['demo.r', 'm0'], replayed ['demo.x', 'm0']" \
        in changed.stdout

    # The next kernel goes on numbering after the last durable event.
    kernel = Kernel(tmp_path, relay)
    try:
        kernel.publish("demo", b"after")
        ControlClient(kernel.socket).request({"op": "recording.sync"})
        after = kernel.astrid("log", "demo", "--limit", "1", "--json")
        assert json.loads(after.stdout)["seq"] > max(seqs)
    finally:
        kernel.proc.terminate()
        kernel.proc.wait()


def test_no_record_switches_recording_off(setup: tuple[Path, Path]) -> None:
    tmp_path, relay = setup
    (tmp_path / "astridd.toml").write_text(
        f'home = "{tmp_path / "home"}"\nlockfile = "plugins.lock"\nkv = "none"\n'
        "[recording]\nenabled = false\n")
    kernel = Kernel(tmp_path, relay)
    try:
        kernel.publish("demo", b"x")
        status = ControlClient(kernel.socket).request({"op": "status"})["status"]
        assert "recording" not in status
    finally:
        kernel.proc.terminate()
        kernel.proc.wait()
    assert not (tmp_path / "home" / "recording").exists()
    logged = kernel.astrid("log")
    assert logged.returncode == 1 and "no recording" in logged.stderr
