"""A person answers the agent's asks in `astrid run`: inline in its terminal, and
with `astrid approvals / approve / deny / revoke` against the control socket it serves.

Real parts only, as in test_agent_session.py: `astrid run --json` in a
subprocess over a real astrid-fs mount, the pinned plugins in the real
kernel, the file tool's `commit` asking `fs.commit` from WebAssembly. The
person's answers travel the paths a person uses: lines on `astrid run`'s
stdin, and the `astrid` CLI in another process. Waits are bounded reads
of the run's output, never sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_agent_session import REPLY_TIMEOUT_S, SAMPLE, AgentRun
from tests.support.mounts import mounted_points, require_fuse

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_fuse()
    return tmp_path_factory.mktemp("approvals-home")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    import shutil

    lower = tmp_path / "project"
    shutil.copytree(SAMPLE, lower)
    return lower


class PersonRun(AgentRun):
    """`astrid run --json`, read event by event (replies and approval events)."""

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def event(self) -> dict[str, Any]:
        line = self.replies.get(timeout=REPLY_TIMEOUT_S)
        assert line is not None, f"astrid run exited: {self.drain_stderr()}"
        event: dict[str, Any] = json.loads(line)
        return event

    def asked(self) -> dict[str, Any]:
        """The next event, which must be an ask; its body."""
        event = self.event()
        assert event.get("approval") == "requested", event
        ask: dict[str, Any] = event["ask"]
        return ask

    def answered(self) -> dict[str, Any]:
        event = self.event()
        assert event.get("approval") == "answered", event
        body: dict[str, Any] = event["ask"]
        return body

    def reply(self) -> dict[str, Any]:
        event = self.event()
        assert "response" in event, event
        response: dict[str, Any] = event["response"]
        return response

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`astrid ...` from another shell, as a person runs it (default socket)."""
        return subprocess.run([sys.executable, "-m", "astrid_runtime.client_cli", *args],
                              capture_output=True, text=True, check=False, timeout=60,
                              env={**os.environ, "ASTRID_HOME": str(self.home)}, cwd=REPO)


@pytest.fixture
def runs(home: Path) -> Iterator[list[PersonRun]]:
    made: list[PersonRun] = []
    yield made
    for run in made:
        run.kill()
    assert not [r for r in made if str(r.mount) in mounted_points()], "mount left behind"


def _start(home: Path, project: Path, session: str, runs: list[PersonRun],
           *extra: str) -> PersonRun:
    run = PersonRun(home, project, session, *extra)
    runs.append(run)
    run.wait_ready()
    return run


def _audit(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (home / "audit.jsonl").read_text().splitlines()]


def test_terminal_answers_deny_then_session(home: Path, project: Path,
                                            runs: list[PersonRun]) -> None:
    run = _start(home, project, "inline", runs)
    run.send("write NOTES.md hello")
    assert run.reply()["ok"] is True
    run.send("commit NOTES.md")
    ask = run.asked()
    assert (ask["plugin"], ask["kind"], ask["resource"]) == (
        "filetool", "fs.commit", "workspace/NOTES.md")
    run.send("n not before the review")
    assert run.answered()["by"] == "terminal"
    reply = run.reply()
    assert reply["ok"] is False and "a person declined: not before the review" in reply["text"]
    assert not (project / "NOTES.md").exists()
    run.send("commit NOTES.md")
    ask = run.asked()
    run.send("s")
    assert run.answered()["answer"] == "session"
    reply = run.reply()
    assert reply["ok"] is True and reply["plugin"] == "kernel", reply
    assert (project / "NOTES.md").read_text() == "hello\n"
    # Allowed for the session: the same commit again does not ask.
    run.send("append NOTES.md again")
    assert run.reply()["ok"] is True
    run.send("commit NOTES.md")
    assert run.reply()["ok"] is True
    assert (project / "NOTES.md").read_text() == "hello\nagain\n"
    assert run.finish("eof") == 0, run.stderr
    lines = _audit(home)
    decisions = [(e["decision"], e.get("by", "")) for e in lines
                 if e["event"] == "cap.decision"]
    assert decisions[-3][:2] == ("deny", "terminal") and decisions[-2] == ("allow", "terminal")
    assert decisions[-1][0] == "allow" and decisions[-1][1].startswith("session approval ")


def test_cli_against_astrid_run_once_always_revoke(home: Path, project: Path,
                                                   runs: list[PersonRun]) -> None:
    run = _start(home, project, "from-cli", runs)
    assert any("control socket" in line for line in run.stderr), run.stderr
    run.send("write a.md alpha")
    assert run.reply()["ok"] is True
    run.send("commit")
    ask = run.asked()
    # The approver arrives late: the ask is still pending, listed, and answerable.
    listing = run.cli("approvals", "--json")
    assert listing.returncode == 0, listing.stderr
    assert [a["id"] for a in json.loads(listing.stdout)["pending"]] == [ask["id"]]
    status = json.loads(run.cli("status", "--json").stdout)
    assert status["approvals"]["pending"] == 1
    done = run.cli("approve", ask["id"])
    assert done.returncode == 0 and "approved (once)" in done.stdout, done.stderr
    assert run.answered()["by"] == "cli"
    assert run.reply()["ok"] is True
    assert (project / "a.md").read_text() == "alpha\n"
    # Once means once: the next commit asks again; this time always.
    run.send("write b.md beta")
    assert run.reply()["ok"] is True
    run.send("commit")
    ask = run.asked()
    assert run.cli("approve", ask["id"], "--always").returncode == 0
    run.answered()
    assert run.reply()["ok"] is True
    assert run.finish("eof") == 0, run.stderr

    # A new run, a new kernel: "always" was kept, so commit does not ask.
    again = _start(home, project, "from-cli-2", runs)
    again.send("write c.md gamma")
    assert again.reply()["ok"] is True
    again.send("commit")
    assert again.reply()["ok"] is True
    assert (project / "c.md").read_text() == "gamma\n"
    standing = json.loads(again.cli("approvals", "--json").stdout)["standing"]
    assert [(g["scope"], g["resource"]) for g in standing] == [("always", "workspace")]
    assert again.cli("revoke", standing[0]["id"]).returncode == 0
    again.send("write d.md delta")
    assert again.reply()["ok"] is True
    again.send("commit")
    ask = again.asked()  # revoked: asks again
    denied = again.cli("deny", ask["id"], "enough")
    assert denied.returncode == 0, denied.stderr
    again.answered()
    assert "a person declined: enough" in again.reply()["text"]
    assert again.finish("eof") == 0, again.stderr
    assert not (project / "d.md").exists()
    assert not (home / "astridd.sock").exists()  # removed when the run ended
