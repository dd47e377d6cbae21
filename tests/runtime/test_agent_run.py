"""The LLM agent end to end: `astrid run --provider openai` over a real session.

Real parts: `astrid run` in a subprocess mounts a real astrid-fs session
(FUSE), boots the real kernel with the pinned orchestrator, llm-openai and
file tool, and reads the person's lines from a pipe; the provider's requests
leave through the kernel's HTTP capability to a real HTTP server on
127.0.0.1. That server is a STAND-IN for the model (scripted replies,
tests/fixtures/openai_standin.py): no model can be downloaded on this
machine. Every wait has a bound (a queue read with a timeout,
`Popen.wait(timeout)`), none is a sleep.

The agent's three components are compiled once into the runtime tests' own
cache (components/build/cwasm, kept across runs; test_http fills it for
llm-openai too), and the run's home gets a copy of it and of the key its
entries are MAC'd with, so `astrid run` loads them instead of compiling.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.openai_standin import Reply, StandIn, ToolCall, openai_standin
from tests.support.agentrun import Run
from tests.support.mounts import mounted_points, require_fuse
from tests.support.warmhome import pinned_subset, seed_home

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-standin-run-8b1f0c2e77"
AGENT_PLUGINS = ("filetool", "llm-openai", "orchestrator")


@pytest.fixture
def home(tmp_path: Path, shipped_home: Path) -> Path:
    """A kernel home whose compile cache is the run's (tests/support/warmhome.py)."""
    require_fuse()
    return seed_home(tmp_path / "home", shipped_home)


@pytest.fixture
def lockfile(tmp_path: Path) -> Path:
    """The repository's pins of the agent's plugins only (the others need not compile)."""
    return pinned_subset(tmp_path / "plugins.lock", AGENT_PLUGINS)


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with openai_standin() as server:
        yield server


def test_the_model_edits_the_session_through_the_file_tool_and_a_person_commits(
        home: Path, lockfile: Path, standin: StandIn, tmp_path: Path) -> None:
    lower = tmp_path / "project"
    lower.mkdir()
    (lower / "README.md").write_text("# demo\n")
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nplugin = "llm-openai"\nkind = "net.http"\n'
                      'decision = "allow"\n')
    standin.script.extend([
        Reply(tool_calls=(ToolCall("fs", {"command": "write hello.txt Hello from the model"},
                                   "call_a"),)),
        Reply("I wrote hello.txt."),
        Reply(tool_calls=(ToolCall("fs", {"command": "commit"}, "call_b"),)),
        Reply("Committed."),
    ])
    run = Run(home, lockfile, lower, "--policy", str(policy), "--provider", "openai",
              "--endpoint", standin.base_url, "--model", "standin-model",
              "--api-key-env", "STANDIN_KEY", environ={"STANDIN_KEY": KEY})
    try:
        ready = run.wait_ready()
        assert "plugins: filetool, llm-openai, orchestrator." in ready, ready
        run.say("please create hello.txt")
        tool = run.answer_from("filetool")
        assert tool["ok"] is True and "hello.txt" in tool["text"]
        answer = run.answer_from("orchestrator")
        assert answer == {**answer, "text": "I wrote hello.txt.", "ok": True}
        # The edit is in the session, not yet in the project.
        assert (run.mount / "hello.txt").read_text() == "Hello from the model\n"
        assert not (lower / "hello.txt").exists()
        # The second turn's commit is a side effect: the person approves it here.
        run.say("commit it")
        event = run.next_event()
        assert event.get("approval") == "requested", event
        assert event["ask"]["plugin"] == "filetool" and event["ask"]["kind"] == "fs.commit"
        run.say("y")
        assert run.answer_from("orchestrator")["text"] == "Committed."
        assert run.finish() == 0
    finally:
        run.kill()
    assert (lower / "hello.txt").read_text() == "Hello from the model\n"
    # What the model was sent: the tool's result went back to it, with the kernel's key.
    first, second = standin.received[0], standin.received[1]
    assert first.body["model"] == "standin-model"
    assert [t["function"]["name"] for t in first.body["tools"]] == ["fs"]
    assert second.body["messages"][-1]["role"] == "tool"
    assert second.body["messages"][-1]["tool_call_id"] == "call_a"
    assert "hello.txt" in second.body["messages"][-1]["content"]
    assert {r.headers["Authorization"] for r in standin.received} == {f"Bearer {KEY}"}
    # The key is in no output and no file of the run's home (recording, audit, logs).
    assert all(KEY not in line for line in run.lines)
    for path in home.rglob("*"):
        if path.is_file() and "cache" not in path.relative_to(home).parts:
            assert KEY.encode() not in path.read_bytes(), path


def test_provider_options_are_checked_before_anything_is_mounted(
        home: Path, lockfile: Path, tmp_path: Path) -> None:
    env = {**os.environ, "ASTRID_HOME": str(home)}
    cases = {
        ("--endpoint", "http://127.0.0.1:9/v1"): "--endpoint needs --provider",
        ("--provider", "openai", "--endpoint", "http://example.com/v1"):
            "host example.com:80 is not in llm-openai's net.http grant",
        ("--provider", "nope"): "plugin llm-nope is not pinned",
        ("--provider", "openai", "--endpoint", "http://127.0.0.1:9/v1",
         "--api-key-env", "UNSET_VAR_FOR_TEST"): "UNSET_VAR_FOR_TEST is not set",
    }
    # Started together (each is a CLI start-up; they share nothing but the home).
    procs = {args: subprocess.Popen(
        [sys.executable, "-m", "astrid_runtime.client_cli", "--lockfile", str(lockfile),
         "run", "--lower", str(tmp_path), "--session", f"bad{i}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        stdin=subprocess.DEVNULL) for i, args in enumerate(cases)}
    for args, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode != 0, args
        assert cases[args] in stderr and "Traceback" not in stderr, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1, stderr
    assert not [m for m in mounted_points() if m.startswith(str(home))]
