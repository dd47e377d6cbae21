"""Issue 16's end to end: one chat turn in which the model calls the file tool, whose
edit lands in the session and is committed after a person approves it in the web
dashboard, in a real browser.

Real parts: `astrid run --provider openai --dashboard` in a subprocess mounts a
real astrid-fs session (FUSE), boots the real kernel with the pinned
orchestrator, llm-openai, file tool and dashboard plugins (WebAssembly), and
listens on 127.0.0.1; the provider's requests leave through the kernel's HTTP
capability to a real HTTP server. That server is a STAND-IN for the model
(tests/fixtures/openai_standin.py, scripted: write a file, then commit, then
say so), the one stand-in these tests allow: no model can be downloaded on this
machine. The person is Debian's headless chromium (tests/support/chromium.py)
on the pages the dashboard plugin serves: it logs in with the printed token and
clicks "Approve once" on the file tool's commit ask. Every wait is bounded (a
queue read with a timeout, a pipe read with a timeout, a MutationObserver in
the page), none is a sleep.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.openai_standin import Reply, StandIn, ToolCall, openai_standin
from tests.support.agentrun import Run
from tests.support.chromium import Chromium
from tests.support.mounts import mounted_points, require_fuse
from tests.support.warmhome import pinned_subset, seed_home

REPO = Path(__file__).resolve().parents[2]
PLUGINS = ("dashboard", "filetool", "llm-openai", "orchestrator")


@pytest.fixture
def agent_home(tmp_path: Path, shipped_home: Path) -> Path:
    """A kernel home of its own whose compile cache is the run's (tests/support/warmhome.py)."""
    require_fuse()
    return seed_home(tmp_path / "home", shipped_home)


@pytest.fixture
def lockfile(tmp_path: Path) -> Path:
    """The repository's pins of the agent's plugins and the dashboard only."""
    return pinned_subset(tmp_path / "plugins.lock", PLUGINS)


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with openai_standin() as server:
        yield server


def test_a_chat_turn_edits_the_session_and_a_person_commits_it_in_the_browser(
        agent_home: Path, lockfile: Path, standin: StandIn, tmp_path: Path) -> None:
    lower = tmp_path / "project"
    lower.mkdir()
    (lower / "README.md").write_text("# demo\n")
    policy = tmp_path / "policy.toml"  # the model may be called; the commit is asked
    policy.write_text('[[rule]]\nplugin = "llm-openai"\nkind = "net.http"\n'
                      'decision = "allow"\n')
    standin.script.extend([
        Reply(tool_calls=(ToolCall("fs", {"command": "write hello.txt Hello from the model"},
                                   "call_a"),)),
        Reply(tool_calls=(ToolCall("fs", {"command": "commit hello.txt"}, "call_b"),)),
        Reply("I wrote hello.txt and it is committed."),
    ])
    run = Run(agent_home, lockfile, lower, "--policy", str(policy), "--provider", "openai",
              "--endpoint", standin.base_url, "--model", "standin-model", "--dashboard")
    browser: Chromium | None = None
    try:
        ready = run.wait_ready()
        assert "plugins: dashboard, filetool, llm-openai, orchestrator." in ready, ready
        assert run.dashboard_url.startswith("http://127.0.0.1:"), run.dashboard_url

        run.say("add hello.txt and commit it")  # one chat turn
        wrote = run.answer_from("filetool")
        assert wrote["ok"] is True and "hello.txt" in wrote["text"], wrote
        asked = run.next_event()
        assert asked.get("approval") == "requested", asked
        assert (asked["ask"]["plugin"], asked["ask"]["kind"]) == ("filetool", "fs.commit")
        # While the ask waits: the edit is in the mounted session, not in the project.
        assert (run.mount / "hello.txt").read_text() == "Hello from the model\n"
        assert not (lower / "hello.txt").exists()

        browser = Chromium(tmp_path / "chromium-profile")
        browser.navigate(run.dashboard_url)  # login -> / -> /plugin/dashboard/
        assert browser.wait_for("document.body && document.body.dataset.ready === '1'")
        assert browser.evaluate("location.pathname") == "/plugin/dashboard/"
        shown = browser.wait_for("document.querySelector('.ask')?.textContent")
        assert "filetool asks fs.commit on workspace/hello.txt" in shown, shown
        diff = browser.wait_for("document.getElementById('diff').textContent"
                                ".includes('hello.txt') && "
                                "document.getElementById('diff').textContent")
        assert "+Hello from the model" in diff, diff
        browser.evaluate("document.querySelector('.ask button[data-answer=once]').click()")

        answered = run.next_event()
        assert answered.get("approval") == "answered", answered
        committed = run.answer_from("kernel")
        assert committed["ok"] is True, committed
        final = run.answer_from("orchestrator")
        assert final["text"] == "I wrote hello.txt and it is committed.", final
        assert browser.wait_for("document.querySelector('.ask') === null")
        assert run.finish() == 0
    finally:
        if browser is not None:
            browser.close()
        run.kill()
    assert str(run.mount) not in mounted_points()
    assert (lower / "hello.txt").read_text() == "Hello from the model\n"
    audit = [json.loads(line) for line in (agent_home / "audit.jsonl").read_text().splitlines()]
    commits = [e for e in audit if e["event"] == "cap.decision" and e["kind"] == "fs.commit"]
    assert [(e["decision"], e.get("by")) for e in commits] == [("allow", "plugin:dashboard")]
    # The model got the write's result before it asked to commit: one turn, three calls.
    assert len(standin.received) == 3
    assert standin.received[1].body["messages"][-1]["tool_call_id"] == "call_a"
