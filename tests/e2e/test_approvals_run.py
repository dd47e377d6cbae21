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
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_agent_session import (
    BOOT_TIMEOUT_S,
    REPLY_TIMEOUT_S,
    SAMPLE,
    AgentRun,
    astrid_fs,
)
from tests.support.mounts import mounted_points

REPO = Path(__file__).resolve().parents[2]


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


def test_terminal_answers_deny_session_once_always(home: Path, project: Path,
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
    # `y`: allowed once; the next commit of that path asks again, and `a` allows it always.
    run.send("write ONCE.md one")
    assert run.reply()["ok"] is True
    run.send("commit ONCE.md")
    assert run.asked()["resource"] == "workspace/ONCE.md"
    run.send("y")
    assert (run.answered()["answer"], run.reply()["ok"]) == ("once", True)
    assert (project / "ONCE.md").read_text() == "one\n"
    run.send("append ONCE.md two")
    assert run.reply()["ok"] is True
    run.send("commit ONCE.md")
    assert run.asked()["resource"] == "workspace/ONCE.md"  # once means once
    run.send("a")
    assert (run.answered()["answer"], run.reply()["ok"]) == ("always", True)
    assert (project / "ONCE.md").read_text() == "one\ntwo\n"
    standing = json.loads(run.cli("approvals", "--json").stdout)["standing"]
    assert sorted((g["scope"], g["resource"], g["by"]) for g in standing) == [
        ("always", "workspace/ONCE.md", "terminal"),
        ("session", "workspace/NOTES.md", "terminal")]
    assert run.finish("eof") == 0, run.stderr
    # The run is over: "always" is kept (listed from $ASTRID_HOME), "session" is gone.
    kept = json.loads(run.cli("approvals", "--json").stdout)["standing"]
    assert [(g["scope"], g["resource"]) for g in kept] == [("always", "workspace/ONCE.md")]
    # ... and revocable with no kernel running (the e2e tests share this home).
    assert run.cli("revoke", kept[0]["id"]).returncode == 0
    assert json.loads(run.cli("approvals", "--json").stdout)["standing"] == []
    decisions = [(e["resource"], e["decision"], e.get("by", ""), e.get("answer", ""))
                 for e in _audit(home) if e["event"] == "cap.decision"]
    notes = [d for d in decisions if d[0] == "workspace/NOTES.md"]
    assert notes[0][1:] == ("deny", "terminal", "")
    assert notes[1][1:] == ("allow", "terminal", "session")
    assert notes[2][1] == "allow" and notes[2][2].startswith("session approval ")
    assert [d[1:] for d in decisions if d[0] == "workspace/ONCE.md"] == [
        ("allow", "terminal", "once"), ("allow", "terminal", "always")]


def test_cli_against_astrid_run_once_always_revoke(home: Path, project: Path,
                                                   runs: list[PersonRun]) -> None:
    run = _start(home, project, "from-cli", runs)
    assert any("control socket" in line for line in run.stderr), run.stderr
    run.send("write a.md alpha")
    assert run.reply()["ok"] is True
    # `astrid tail` and `astrid publish` reach astrid run's kernel too: a request
    # published from another shell is answered, and the answer is tailed.
    tail = subprocess.Popen(
        [sys.executable, "-m", "astrid_runtime.client_cli", "tail", "agent.response",
         "--count", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "ASTRID_HOME": str(home)}, cwd=REPO)
    try:
        assert tail.stderr is not None and "tailing" in tail.stderr.readline()
        published = run.cli("publish", "user.input", "cat a.md")
        assert published.returncode == 0, published.stderr
        assert "alpha" in run.reply()["text"]
        tailed, _ = tail.communicate(timeout=60)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert tailed.startswith("agent.response ") and "alpha" in tailed, tailed
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


def test_autonomous_mode_with_interceptors(home: Path, project: Path, tmp_path: Path,
                                           runs: list[PersonRun]) -> None:
    # The interceptors pinned in the repository's plugins.lock, named by the policy:
    # autonomous mode lets the agent commit on its own, except what they refuse.
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[[interceptor]]\nname = "secret-filter"\n\n'
        '[[interceptor]]\nname = "path-guard"\n'
        'config = "deny fs.commit workspace/private/* private stays private"\n')
    run = _start(home, project, "autonomous", runs, "--policy", str(policy),
                 "--mode", "autonomous")
    assert any("approval mode autonomous" in line for line in run.stderr), run.stderr
    for request in ("write private/diary.md dear diary", "write ok.md fine",
                    "write bob@example.org.md mail me"):
        run.send(request)
        assert run.reply()["ok"] is True
    run.send("commit private/diary.md")
    reply = run.reply()
    assert reply["ok"] is False and "path-guard: deny fs.commit" in reply["text"], reply
    run.send("commit bob@example.org.md")
    reply = run.reply()
    assert reply["ok"] is False and "secret-filter: email in resource" in reply["text"]
    run.send("commit ok.md")  # no ask: autonomous
    assert run.reply()["ok"] is True
    status = json.loads(run.cli("status", "--json").stdout)
    assert [(i["name"], i["checks"]) for i in status["interceptors"]] == [
        ("secret-filter", 3), ("path-guard", 2)]
    assert run.finish("eof") == 0, run.stderr
    assert (project / "ok.md").exists() and not (project / "private").exists()
    stages = [e["stage"] for e in _audit(home) if e["event"] == "cap.decision"][-3:]
    assert stages == ["interceptor:path-guard", "interceptor:secret-filter", "policy"]


class Terminal:
    """`astrid run` on a pseudo-terminal, as a person at a terminal runs it."""

    def __init__(self, home: Path, lower: Path, session: str):
        import pty
        import threading

        self.home, self.session = home, session
        self.mount = home / "mnt" / session
        self.master, slave = pty.openpty()
        env = {**os.environ, "ASTRID_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "astrid_runtime.client_cli", "--lockfile",
             str(REPO / "plugins.lock"), "run", "--lower", str(lower), "--session", session],
            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO, close_fds=True)
        os.close(slave)
        self.seen = ""
        self.chunks: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the other side closed
                chunk = b""
            if not chunk:
                self.chunks.put(None)
                return
            self.chunks.put(chunk.decode("utf-8", "replace"))

    def expect(self, text: str, timeout: float = BOOT_TIMEOUT_S) -> None:
        """Read the terminal until `text` has appeared (after what was expected before)."""
        while text not in self.seen:
            chunk = self.chunks.get(timeout=timeout)
            assert chunk is not None, f"terminal closed before {text!r}: {self.seen[-2000:]}"
            self.seen += chunk
        self.seen = self.seen[self.seen.index(text) + len(text):]

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)
        os.close(self.master)
        if str(self.mount) in mounted_points():
            astrid_fs(self.home, "umount", str(self.mount))


def test_the_person_answers_at_the_terminal_prompt(home: Path, project: Path) -> None:
    term = Terminal(home, project, "at-a-tty")
    try:
        term.expect("Ctrl-D or Ctrl-C ends.")
        term.expect("you> ")
        term.type("write NOTES.md typed at a terminal")
        term.expect("Wrote NOTES.md")
        term.type("commit NOTES.md")
        term.expect("approval needed [")
        term.expect("filetool wants fs.commit on workspace/NOTES.md")
        term.expect("answer here: y (once) | s (this session) | a (always) | n [reason]")
        term.type("s")
        term.expect("approved (session) by terminal")
        term.expect("committed 1 change(s)")
        term.expect("you> ")
        os.write(term.master, b"\x04")  # Ctrl-D at the start of a line: EOF
        assert term.proc.wait(timeout=BOOT_TIMEOUT_S) == 0
        # its one change landed: nothing left to commit, so no commit is offered
        term.expect("nothing in it differs from")
    finally:
        term.close()
    assert (project / "NOTES.md").read_text() == "typed at a terminal\n"
