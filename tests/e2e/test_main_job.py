"""The README's main job, as `scripts/run.sh` runs it: its own scripted requests piped
into `astrid run` (plain transcript, no `--json`), ending with the agent asking to
commit, the scripted `y` answering at the same prompt a person types at, and the
commit landing in the sample project.

The requests are read from `scripts/run.sh` itself, so the test and the demo cannot
drift apart; what the script adds around them (set-up, copying the sample project,
printing the audit trail) is done here with the test's own home and project.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_agent_session import BOOT_TIMEOUT_S, REPO, SAMPLE
from tests.support.mounts import mounted_points

RUN_SH = REPO / "scripts" / "run.sh"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    lower = tmp_path / "project"
    shutil.copytree(SAMPLE, lower)  # as run.sh copies it
    return lower


def scripted_requests() -> str:
    """The lines run.sh pipes into `astrid run` (its `<<'REQUESTS'` here-document)."""
    text = RUN_SH.read_text()
    start = text.index("<<'REQUESTS'\n") + len("<<'REQUESTS'\n")
    return text[start:text.index("\nREQUESTS\n", start) + 1]


def test_the_main_job_ends_with_the_commit_approved_and_landed(home: Path,
                                                               project: Path) -> None:
    requests = scripted_requests()
    assert requests.splitlines()[-2:] == ["commit", "y"], requests  # ask, then the answer
    session = "main-job"
    done = subprocess.run(
        [sys.executable, "-m", "astrid_runtime.client_cli", "--lockfile",
         str(REPO / "plugins.lock"), "run", "--lower", str(project), "--session", session],
        input=requests, capture_output=True, text=True, timeout=BOOT_TIMEOUT_S, cwd=REPO,
        env={**os.environ, "ASTRID_HOME": str(home), "PYTHONUNBUFFERED": "1"}, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # The transcript, in order: the ask, the person's answer at the prompt, the commit.
    marks = ["you> commit\n", "astrid: approval needed [",
             "filetool wants fs.commit on workspace", "you> y\n",
             "approved (once) by terminal", f"committed 3 change(s) to {project}"]
    at = [out.find(mark) for mark in marks]
    assert -1 not in at and at == sorted(at), out
    assert (project / "NOTES.md").read_text() == "Reviewed by Astrid.\n"
    assert "- review the session with astrid-fs diff" in (project / "src/todo.txt").read_text()
    assert "Hi there" in (project / "src/greet.py").read_text()
    assert str(home / "mnt" / session) not in mounted_points()
    # The audit trail names the deferral, who answered, the stage, and the commit.
    trail = [json.loads(line) for line in (home / "audit.jsonl").read_text().splitlines()]
    mine = [e for e in trail if e["event"] in ("cap.ask", "cap.answer", "cap.decision")
            and e["resource"] == "workspace"][-3:]
    assert [(e["event"], e.get("decision") or e.get("answer"), e.get("by", "")) for e in mine] \
        == [("cap.ask", "deferred", ""), ("cap.answer", "once", "terminal"),
            ("cap.decision", "allow", "terminal")]
    assert mine[-1]["stage"] == "approval"
    commits = [e for e in trail if e["event"] == "fs.commit"]
    assert commits[-1]["ok"] is True and commits[-1]["session"] == session
