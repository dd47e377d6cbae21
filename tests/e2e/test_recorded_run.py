"""`astrid run` records its session on one timeline (issue 15).

A real `astrid run` (FUSE mount, the pinned plugins) is asked to write one
file twice; after it ends, `astrid log` (reading the store the run left)
shows which events changed which files and the session snapshot each one
took, `astrid replay filetool` reruns the plugin identically against the
recording, and `astrid-fs rollback SESSION bus-SEQ` takes the session's
files back to how the first write left them.
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

from tests.e2e.test_agent_session import REPO, AgentRun, astrid_fs
from tests.support.mounts import mounted_points


@pytest.fixture
def runs(home: Path) -> Iterator[list[AgentRun]]:
    started: list[AgentRun] = []
    yield started
    for run in started:
        run.kill()
    assert not [r for r in started if str(r.mount) in mounted_points()], "mount left behind"


def astrid(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The `astrid` client as a person runs it, with no kernel running."""
    return subprocess.run(
        [sys.executable, "-m", "astrid_runtime.client_cli", "--lockfile",
         str(REPO / "plugins.lock"), *args], capture_output=True, text=True,
        env={**os.environ, "ASTRID_HOME": str(home)}, cwd=REPO, check=False, timeout=600)


def test_a_run_is_recorded_and_its_files_roll_back_to_an_event(
        home: Path, tmp_path: Path, runs: list[AgentRun]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("a project\n")
    run = AgentRun(home, project, "e2e-rec")
    runs.append(run)
    run.wait_ready()
    assert run.ask("write notes/plan.md first draft")["ok"] is True
    assert run.ask("write notes/plan.md second draft")["ok"] is True
    assert run.finish("eof") == 0, run.stderr
    assert not any("not recording" in line for line in run.stderr), run.stderr

    logged = astrid(home, "log", "tools.fs", "--limit", "0", "--json")
    assert logged.returncode == 0, logged.stderr
    events: list[dict[str, Any]] = [json.loads(line) for line in logged.stdout.splitlines()]
    writes = [(e["seq"], c) for e in events for c in e["calls"]
              if c["plugin"] == "filetool" and c["outcome"] == "ok" and c["wrote"]]
    # The first write made the directory too.
    assert [c["wrote"] for _, c in writes][-2:] == [["notes", "notes/plan.md"],
                                                    ["notes/plan.md"]], events
    (first, first_call), (second, second_call) = writes[-2:]
    assert first < second
    assert (first_call["snapshot"], second_call["snapshot"]) == (f"bus-{first}",
                                                                 f"bus-{second}")
    text = astrid(home, "log", "tools.fs", "--from", str(first), "--to", str(first))
    assert f"filetool wrote notes, notes/plan.md (snapshot bus-{first})" in text.stdout, \
        text.stdout

    # The run's user.input -> router -> tools.fs chain is recorded with its host calls:
    # the filetool replays identically from the recording alone (no mount, no files).
    replayed = astrid(home, "replay", "filetool", "--from", str(first), "--to", str(second),
                      "--json")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    report = json.loads(replayed.stdout)
    assert report["identical"] and report["replayed"] == 2, report

    snapshots = astrid_fs(home, "log", "e2e-rec")
    assert f"bus-{first}" in snapshots.stdout and f"bus-{second}" in snapshots.stdout
    rolled = astrid_fs(home, "rollback", "e2e-rec", f"bus-{first}")
    assert rolled.returncode == 0, rolled.stderr
    assert not (project / "notes").exists()  # the project is untouched until a commit
    committed = astrid_fs(home, "commit", "e2e-rec")
    assert committed.returncode == 0, committed.stderr
    assert (project / "notes" / "plan.md").read_text() == "first draft\n"


def test_no_record_leaves_the_session_unrecorded(
        home: Path, tmp_path: Path, runs: list[AgentRun]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    run = AgentRun(home, project, "e2e-norec", "--no-record")
    runs.append(run)
    run.wait_ready()
    assert run.ask("write quiet.md nothing recorded")["ok"] is True
    assert run.finish("eof") == 0, run.stderr
    snapshots = astrid_fs(home, "log", "e2e-norec")
    assert snapshots.returncode == 0, snapshots.stderr
    assert "bus-" not in snapshots.stdout
