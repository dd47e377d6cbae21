"""The agent session end to end: `astrid run` as a person runs it.

Real parts only: `astrid run` in a subprocess mounts a real astrid-fs
session (FUSE), boots the real kernel with the pinned WebAssembly plugins
and reads requests from a pipe; the file tool edits the workspace through
vfs handles on the mount; `astrid-fs diff` shows the edit, `astrid-fs
commit` lands it in the project. Every wait has a bound (a reply queue
read with a timeout, `Popen.wait(timeout)`), none is a sleep.

The home directory (and so the compile cache) is shared by the e2e tests
(tests/e2e/conftest.py): the first boot compiles the plugins, the others
load them.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.mounts import mounted_points

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "scripts" / "demo" / "sample-project"
#: Bounds, not synchronisation: a cold first boot compiles four ~18 MB components
#: (76 s for one of them with three engineers' jobs on the machine's two cores).
BOOT_TIMEOUT_S = 400
REPLY_TIMEOUT_S = 60


@pytest.fixture
def project(tmp_path: Path) -> Path:
    lower = tmp_path / "project"
    shutil.copytree(SAMPLE, lower)
    return lower


def _pump(stream: IO[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))
    into.put(None)


class AgentRun:
    """`astrid run --json` in a subprocess, with its stdout and stderr read by threads."""

    def __init__(self, home: Path, lower: Path, session: str, *extra: str):
        self.home = home
        self.session = session
        self.mount = home / "mnt" / session
        env = {**os.environ, "ASTRID_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "astrid_runtime.client_cli", "--lockfile",
             str(REPO / "plugins.lock"), "run", "--lower", str(lower), "--session", session,
             "--json", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, cwd=REPO)
        self.replies: queue.Queue[str | None] = queue.Queue()
        self.errors: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, into in ((self.proc.stdout, self.replies), (self.proc.stderr, self.errors)):
            threading.Thread(target=_pump, args=(stream, into), daemon=True).start()

    def wait_ready(self) -> None:
        while True:
            line = self.errors.get(timeout=BOOT_TIMEOUT_S)
            assert line is not None, f"astrid run exited early: {self.stderr}"
            self.stderr.append(line)
            if " mounted at " in line:
                booted = set(line.split("plugins: ", 1)[1].split(".")[0].strip().split(", "))
                # The agent's own plugins; others pinned beside them (mdview, ...) may run too.
                assert {"filetool", "notes", "router", "wordcount"} <= booted, line
                return

    def ask(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        line = self.replies.get(timeout=REPLY_TIMEOUT_S)
        assert line is not None, f"astrid run exited: {self.drain_stderr()}"
        reply: dict[str, Any] = json.loads(line)["response"]
        return reply

    def drain_stderr(self) -> list[str]:
        while True:
            try:
                line = self.errors.get(timeout=BOOT_TIMEOUT_S if self.proc.poll() is None
                                       else 5)
            except queue.Empty:
                return self.stderr
            if line is None:
                return self.stderr
            self.stderr.append(line)

    def finish(self, how: str) -> int:
        """End the run with EOF or SIGINT (Ctrl-C); its exit status."""
        if how == "eof":
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        else:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=BOOT_TIMEOUT_S)
        self.drain_stderr()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if str(self.mount) in mounted_points():
            astrid_fs(self.home, "umount", str(self.mount))


def astrid_fs(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The `astrid-fs` CLI as a person runs it."""
    return subprocess.run([sys.executable, "-m", "astrid_fs.cli", *args], capture_output=True,
                          text=True, env={**os.environ, "ASTRID_HOME": str(home)},
                          check=False, timeout=120)


@pytest.fixture
def agent(home: Path) -> Iterator[list[AgentRun]]:
    runs: list[AgentRun] = []
    yield runs
    for run in runs:
        run.kill()
    assert not [r for r in runs if str(r.mount) in mounted_points()], "mount left behind"


def _audit(home: Path) -> list[dict[str, Any]]:
    path = home / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_edit_review_commit(home: Path, project: Path, agent: list[AgentRun]) -> None:
    before = (project / "src" / "greet.py").read_text()
    run = AgentRun(home, project, "e2e-edit")
    agent.append(run)
    run.wait_ready()

    reply = run.ask("write notes/plan.md ship the agent session")
    assert reply["ok"] is True and reply["plugin"] == "filetool", reply
    reply = run.ask("replace src/greet.py Hello 'Hi there'")
    assert reply["ok"] is True, reply
    assert "Replaced 1 occurrence" in reply["text"]
    reply = run.ask("cat notes/plan.md")
    assert reply["text"] == "ship the agent session\n"
    # The edit is in the session's view (the mount) and not in the project.
    assert (run.mount / "notes" / "plan.md").read_text() == "ship the agent session\n"
    assert not (project / "notes").exists()
    assert (project / "src" / "greet.py").read_text() == before

    assert run.finish("sigint") == 0, run.stderr
    assert str(run.mount) not in mounted_points()

    assert "src/greet.py" in astrid_fs(home, "diff", "e2e-edit").stdout
    diff = astrid_fs(home, "diff", "--json", "e2e-edit")
    assert diff.returncode == 0, diff.stderr
    changed = {c["path"]: c for c in json.loads(diff.stdout)}
    # the hint counts what is left to review
    assert any(f"kept for review ({len(changed)} changes)" in line for line in run.stderr), \
        run.stderr
    assert {"notes/plan.md", "src/greet.py"} <= set(changed), changed
    committed = astrid_fs(home, "commit", "e2e-edit")
    assert committed.returncode == 0, committed.stderr
    assert (project / "notes" / "plan.md").read_text() == "ship the agent session\n"
    assert "Hi there" in (project / "src" / "greet.py").read_text()


def test_hostile_requests_are_refused_audited_and_change_nothing(
        home: Path, project: Path, tmp_path: Path, agent: list[AgentRun]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    os.symlink(outside, project / "escape")
    os.symlink(outside / "secret.txt", project / "secret-link")
    lower_before = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    audit_before = len(_audit(home))

    run = AgentRun(home, project, "e2e-hostile")
    agent.append(run)
    run.wait_ready()
    refusals = {
        "cat ../outside/secret.txt": "invalid",
        "cat /etc/passwd": "invalid",
        "cat secret-link": "denied",
        "cat escape/secret.txt": "denied",
        "write escape/planted.txt gotcha": "denied",
        "rm escape/secret.txt": "denied",
        "mv src/greet.py escape/greet.py": "denied",
    }
    for request, kind in refusals.items():
        reply = run.ask(request)
        assert reply["ok"] is False and reply["error"] == kind, (request, reply)
    # `commit` goes through the approval pipeline: with no policy file the
    # default is "ask"; the ask waits for the person, who denies it inline.
    assert run.proc.stdin is not None
    run.proc.stdin.write("commit\n")
    run.proc.stdin.flush()
    event = json.loads(run.replies.get(timeout=REPLY_TIMEOUT_S) or "{}")
    assert event.get("approval") == "requested", event
    run.proc.stdin.write("n\n")
    run.proc.stdin.flush()
    events = [json.loads(run.replies.get(timeout=REPLY_TIMEOUT_S) or "{}") for _ in range(2)]
    assert events[0].get("approval") == "answered", events
    reply = events[1]["response"]
    assert reply["ok"] is False and reply["error"] == "denied", reply
    assert "a person declined" in reply["text"]
    assert run.finish("eof") == 0, run.stderr

    assert (outside / "secret.txt").read_text() == "secret\n"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == lower_before
    diff = astrid_fs(home, "diff", "--json", "e2e-hostile")
    assert json.loads(diff.stdout) == [], diff.stdout
    lines = _audit(home)[audit_before:]
    refused = [entry for entry in lines if entry["event"] == "vfs.refused"]
    assert len(refused) >= len(refusals), lines
    assert all(entry["plugin"] == "filetool" for entry in refused)
    decisions = [entry for entry in lines if entry["event"] == "cap.decision"]
    assert decisions[-1]["decision"] == "deny" and decisions[-1]["stage"] == "approval"


def test_commit_through_the_agent_with_a_policy(
        home: Path, project: Path, tmp_path: Path, agent: list[AgentRun]) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('default = "deny"\n\n[[rule]]\nplugin = "filetool"\nkind = "fs.commit"\n'
                      'resource = "workspace/docs/*"\ndecision = "allow"\nttl_s = 30\n')
    run = AgentRun(home, project, "e2e-commit", "--policy", str(policy))
    agent.append(run)
    run.wait_ready()
    assert run.ask("write docs/a.md alpha")["ok"] is True
    assert run.ask("write other.md beta")["ok"] is True
    reply = run.ask("commit other.md")  # outside the rule's glob: the default denies
    assert reply["ok"] is False and "(policy)" in reply["text"], reply
    reply = run.ask("commit docs/a.md")
    assert reply["ok"] is True and reply["plugin"] == "kernel", reply
    assert run.finish("eof") == 0, run.stderr
    assert (project / "docs" / "a.md").read_text() == "alpha\n"
    assert not (project / "other.md").exists()  # still only in the session
    checks = [e for e in _audit(home) if e["event"] == "cap.check"]
    assert checks[-1]["ok"] is True and checks[-1]["resource"] == "workspace/docs/a.md"


@pytest.mark.parametrize(("args", "start"), [
    (["--lower", "{tmp}/nope"], "astrid: --lower"),
    (["--lower", "{tmp}", "--session", "../up"], "astrid: --session: invalid session name"),
    (["--lower", "{tmp}", "--policy", "{tmp}/bad.toml"], "astrid: {tmp}/bad.toml:1: default"),
    (["--lower", "{tmp}", "--mount", "{tmp}/no/such"], "astrid: --mount"),
])
def test_bad_input_is_one_line_before_mounting(home: Path, tmp_path: Path, args: list[str],
                                               start: str) -> None:
    (tmp_path / "bad.toml").write_text('default = "perhaps"\n')
    env = {**os.environ, "ASTRID_HOME": str(home)}
    argv = [a.format(tmp=tmp_path) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "astrid_runtime.client_cli", "--lockfile",
         str(REPO / "plugins.lock"), "run", *argv],
        capture_output=True, text=True, env=env, cwd=REPO, check=False, timeout=60,
        stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start.format(tmp=tmp_path)), done.stderr
    assert not [m for m in mounted_points() if m.startswith(str(home))]  # nothing mounted
