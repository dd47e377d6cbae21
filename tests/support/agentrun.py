"""`astrid run --provider ... --json` in a subprocess, as a person runs the LLM agent:
its stdout (one JSON event a line) and stderr read by threads into queues, every
wait bounded (a queue read with a timeout, `Popen.wait(timeout)`), none a sleep."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from tests.support.mounts import mounted_points

REPO = Path(__file__).resolve().parents[2]
#: Bounds, not synchronisation: a cold boot compiles three ~18 MB components.
BOOT_TIMEOUT_S = 400
REPLY_TIMEOUT_S = 60


def _pump(stream: IO[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))
    into.put(None)


def astrid_fs(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The `astrid-fs` CLI as a person runs it."""
    return subprocess.run([sys.executable, "-m", "astrid_fs.cli", *args], capture_output=True,
                          text=True, env={**os.environ, "ASTRID_HOME": str(home)},
                          check=False, timeout=120)


class Run:
    """`astrid run --provider openai --json` in a subprocess; replies read by threads."""

    def __init__(self, home: Path, lockfile: Path, lower: Path, *extra: str,
                 environ: dict[str, str] | None = None):
        self.mount = home / "mnt" / "agent"
        env = {**os.environ, "ASTRID_HOME": str(home), "PYTHONUNBUFFERED": "1",
               **(environ or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "astrid_runtime.client_cli", "--lockfile", str(lockfile),
             "run", "--lower", str(lower), "--session", "agent", "--json", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, cwd=REPO)
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        self.lines: list[str] = []
        #: The login URL `--dashboard` printed, once `wait_ready` saw it.
        self.dashboard_url = ""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=_pump, args=(stream, into), daemon=True).start()

    def wait_ready(self) -> str:
        stderr: list[str] = []
        while True:
            line = self.err.get(timeout=BOOT_TIMEOUT_S)
            assert line is not None, f"astrid run exited early: {stderr}"
            stderr.append(line)
            if line.startswith("astrid: dashboard "):
                self.dashboard_url = line.removeprefix("astrid: dashboard ")
            if " mounted at " in line:
                return line

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def next_event(self) -> dict[str, Any]:
        line = self.out.get(timeout=REPLY_TIMEOUT_S)
        assert line is not None, "astrid run exited"
        self.lines.append(line)
        event: dict[str, Any] = json.loads(line)
        return event

    def answer_from(self, plugin: str) -> dict[str, Any]:
        """Responses until one from `plugin` (the file tool's results come first)."""
        while True:
            event = self.next_event()
            response = event.get("response")
            if response is not None and response.get("plugin") == plugin:
                return dict(response)

    def finish(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout=BOOT_TIMEOUT_S)
        while (line := self.out.get(timeout=REPLY_TIMEOUT_S)) is not None:
            self.lines.append(line)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if str(self.mount) in mounted_points():
            astrid_fs(self.mount.parent.parent, "umount", str(self.mount))


__all__ = ["BOOT_TIMEOUT_S", "REPLY_TIMEOUT_S", "Run", "astrid_fs"]
