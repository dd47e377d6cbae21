"""astridd and astrid as programs: boot, status, publish, tail, refusals,
clean shutdown on SIGTERM and SIGINT, and one-line errors for bad input.

Synchronisation is by the daemon's own log lines (read from its stderr) and
the client's "tailing" line, never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from testkit import write_plugin

from tests.support.warmhome import TEMPLATE, seed_home

BIN = Path(sys.executable).parent
ASTRIDD = [str(BIN / "astridd")]
ASTRID = [str(BIN / "astrid")]


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: Path
    lock: Path
    events: list[dict[str, Any]]

    def wait_event(self, event: str) -> dict[str, Any]:
        """Read the daemon's JSON log lines until `event` appears."""
        assert self.proc.stderr is not None
        for raw in _lines(self.proc.stderr):
            record = json.loads(raw)
            self.events.append(record)
            if record.get("event") == event:
                return record
        raise AssertionError(f"astridd exited before {event}: {self.events}")

    def client(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ASTRID, "--socket", str(self.socket), *args], input=
                              stdin.decode() if stdin is not None else None,
                              capture_output=True, text=True, timeout=60)


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    while True:
        line = stream.readline()
        if not line:
            return
        yield line


@pytest.fixture
def daemon(tmp_path: Path, component_paths: dict[str, Path]) -> Iterator[Daemon]:
    plugins = tmp_path / "plugins"
    relay = write_plugin(plugins, "relay", component_paths["relay"], config="demo",
                         publish=("demo.>",), subscribe=("demo",))
    lock = tmp_path / "plugins.lock"
    done = subprocess.run([*ASTRID, "--lockfile", str(lock), "plugin", "install",
                           "--allow-wildcards", str(relay)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    unlisted = write_plugin(plugins, "unlisted", component_paths["relay"], config="x",
                            subscribe=("x",))
    config = tmp_path / "astridd.toml"
    config.write_text(f'home = "{tmp_path / "home"}"\nlockfile = "plugins.lock"\n'
                      f'plugins = ["plugins/relay", "plugins/unlisted"]\nkv = "none"\n')
    sock = tmp_path / "home" / "astridd.sock"
    proc = subprocess.Popen([*ASTRIDD, "--config", str(config)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    d = Daemon(proc, sock, lock, [])
    try:
        d.wait_event("kernel.booted")
        yield d
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    _ = unlisted


def test_status_publish_tail_and_sigterm(daemon: Daemon) -> None:
    daemon.wait_event("plugin.running")
    status = json.loads(daemon.client("status", "--json").stdout)
    states = {p["name"]: p["state"] for p in status["plugins"]}
    assert states == {"relay": "running", "unlisted": "refused"}

    tail = subprocess.Popen([*ASTRID, "--socket", str(daemon.socket), "tail", ">",
                             "--count", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert tail.stderr is not None
    assert "tailing" in tail.stderr.readline()
    published = daemon.client("publish", "demo", "hello kernel")
    assert published.returncode == 0, published.stderr
    assert "1 subscriber" in published.stdout
    out, _ = tail.communicate(timeout=60)
    assert out.splitlines() == ["demo hello kernel", "demo.r hello kernel"]

    text = daemon.client("status").stdout
    assert "relay" in text and "running" in text and "unlisted" in text

    daemon.proc.send_signal(signal.SIGTERM)
    daemon.wait_event("kernel.stopped")
    assert daemon.proc.wait(timeout=60) == 0
    assert not daemon.socket.exists()


def test_sigint_shuts_down_cleanly(daemon: Daemon) -> None:
    daemon.proc.send_signal(signal.SIGINT)
    stopping = daemon.wait_event("kernel.stopping")
    assert stopping["signal"] == "SIGINT"
    assert daemon.proc.wait(timeout=60) == 0


def test_publish_refusals_are_one_line(daemon: Daemon) -> None:
    bad = daemon.client("publish", "bad..topic", "x")
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "empty token" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_unreachable_daemon_and_bad_config(tmp_path: Path) -> None:
    gone = subprocess.run([*ASTRID, "--socket", str(tmp_path / "none.sock"), "status"],
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 3 and gone.stderr.startswith("astrid: astridd is not running")
    config = tmp_path / "astridd.toml"
    config.write_text('home = "/tmp/x"\nguest_threads = "two"\n')
    bad = subprocess.run([*ASTRIDD, "--config", str(config)], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1
    assert bad.stderr == f"astridd: {config}:2: guest_threads must be int, not str\n"


def test_a_named_lockfile_that_is_not_there_stops_boot(tmp_path: Path) -> None:
    """`astridd --lockfile TYPO` booted an empty kernel (a missing lockfile is
    an empty lock only where none was named)."""
    config = tmp_path / "astridd.toml"
    config.write_text(f'home = "{tmp_path / "home"}"\nkv = "none"\n')
    lock = tmp_path / "plugins.lok"
    bad = subprocess.run([*ASTRIDD, "--config", str(config), "--lockfile", str(lock)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr == f"astridd: --lockfile {lock}: no such file\n"
    assert not (tmp_path / "home" / "astridd.sock").exists()


def test_malformed_lockfile_stops_boot_with_the_line(tmp_path: Path) -> None:
    lock = tmp_path / "plugins.lock"
    lock.write_text('version = 1\n[[plugin]]\nname = "x"\nversion = 1\n')
    config = tmp_path / "astridd.toml"
    config.write_text(f'home = "{tmp_path / "home"}"\nkv = "none"\n')
    bad = subprocess.run([*ASTRIDD, "--config", str(config), "--lockfile", str(lock)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.endswith(f"astridd: {lock}:2: [[plugin]] is missing 'component'\n")
    assert "Traceback" not in bad.stderr


def test_plugin_install_verify_list(tmp_path: Path, component_paths: dict[str, Path]) -> None:
    plugin = write_plugin(tmp_path, "relay", component_paths["relay"], subscribe=("demo",))
    lock = tmp_path / "plugins.lock"

    def astrid(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ASTRID, "--lockfile", str(lock), *args], capture_output=True,
                              text=True, timeout=60)

    assert astrid("plugin", "install", str(plugin)).returncode == 0
    listed = json.loads(astrid("plugin", "list", "--json").stdout)
    assert [(p["name"], p["grants"]["subscribe"]) for p in listed] == [("relay", ["demo"])]
    assert astrid("plugin", "verify").stdout.startswith("ok       relay")
    with (plugin / "relay.wasm").open("ab") as f:
        f.write(b"tamper")
    verify = astrid("plugin", "verify")
    assert verify.returncode == 4 and "does not match plugins.lock" in verify.stdout
    missing = astrid("plugin", "install", str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    assert missing.stderr == f"astrid: {tmp_path / 'nowhere'}: no such file\n"
    core = write_plugin(tmp_path, "core", component_paths["relay"])
    (core / "core.wasm").write_bytes(b"\0asm\x01\x00\x00\x00")
    not_component = astrid("plugin", "install", str(core))
    assert not_component.returncode == 1
    assert not_component.stderr.startswith(f"astrid: {core / 'core.wasm'}: not a WebAssembly "
                                           "component")
    assert [p["name"] for p in json.loads(astrid("plugin", "list", "--json").stdout)] == ["relay"]


@pytest.mark.usefixtures("components")  # pyecho compiled into the tests' cache
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_kv_written_through_a_plugin_survives_the_daemon(
        tmp_path: Path, component_paths: dict[str, Path], stop: str) -> None:
    from astrid_runtime.kv import KvStore

    # The tests' compile cache (pyecho is in it): no 18 MiB recompile.
    home = seed_home(tmp_path / "home", TEMPLATE)
    plugin = write_plugin(tmp_path / "plugins", "pyecho", component_paths["pyecho"],
                          publish=("echo.>",), subscribe=("echo.>",), kv=True)
    lock = tmp_path / "plugins.lock"
    # install compiles into the kernel's cache: the one linked above, a hit
    subprocess.run([*ASTRID, "--lockfile", str(lock), "plugin", "install", "--allow-wildcards",
                    str(plugin)], check=True, capture_output=True, timeout=60,
                   env={**os.environ, "ASTRID_HOME": str(home)})
    config = tmp_path / "astridd.toml"
    config.write_text(f'home = "{home}"\nkv = "surrealkv://kv"\n')
    proc = subprocess.Popen([*ASTRIDD, "--config", str(config), "--lockfile", str(lock)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    daemon = Daemon(proc, home / "astridd.sock", lock, [])
    try:
        daemon.wait_event("plugin.running")
        tail = subprocess.Popen([*ASTRID, "--socket", str(daemon.socket), "tail",
                                 "echo.kv.out", "--count", "1"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert tail.stderr is not None and "tailing" in tail.stderr.readline()
        assert daemon.client("publish", "echo.kv", "kept across restarts").returncode == 0
        out, _ = tail.communicate(timeout=60)
        assert out == "echo.kv.out kept across restarts\n"
        proc.send_signal(getattr(signal, stop))
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    store = KvStore(f"surrealkv://{home / 'kv'}")
    try:
        assert store.get("pyecho", "last") == b"kept across restarts"
    finally:
        store.close()
