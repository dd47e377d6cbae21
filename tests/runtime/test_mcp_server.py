"""`astrid mcp`: a real MCP client (the SDK's stdio client) works inside a session.

Real parts only: `astrid mcp` in a subprocess started by `mcp.client.stdio`
mounts a real astrid-fs session (FUSE) and boots the real kernel with the
pinned file tool (WebAssembly); the client lists the tools and calls them;
the edits land in the session (`astrid-fs diff`), a path out of the
workspace is refused by the kernel's VFS (and audited), and a commit waits
for a person, who answers with the `astrid` CLI against the control socket
(a denial) and in the dashboard (the approval).
Every wait is bounded (`trio.fail_after`, a subprocess timeout); the ask is
awaited on the bus through `tail`, never by sleeping. With `--dashboard` the
same kernel serves the web dashboard: the second ask is approved there.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp import ClientSession, StdioServerParameters, stdio_client

from astrid_fs.session import open_session
from astrid_runtime.control import ControlClient
from astrid_runtime.mcp.filetool import ToolRequestError, command
from tests.support.mounts import mounted_points, require_fuse, run_cli
from tests.support.warmhome import pinned_subset, seed_home

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "scripts" / "demo" / "sample-project"
#: Bounds, not synchronisation: a first boot compiles the file tool (4-8 s alone, over
#: a minute with other jobs on the machine's two cores); the run compiles it once
#: (tests/support/warmhome.py).
BOOT_TIMEOUT_S = 300
CALL_TIMEOUT_S = 60
SESSION = "mcp-e2e"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, shipped_home: Path) -> Iterator[dict[str, Path]]:
    """A home, a project and a lockfile pinning only the file tool."""
    require_fuse()
    root = tmp_path_factory.mktemp("mcp")
    home, project = root / "home", root / "project"
    seed_home(home, shipped_home)  # the run's compile cache (tests/support/warmhome.py)
    shutil.copytree(SAMPLE, project)
    lock = pinned_subset(root / "plugins.lock", ("filetool", "dashboard"))
    yield {"root": root, "home": home, "project": project, "lock": lock,
           "socket": root / "ctl.sock", "mount": home / "mnt" / SESSION}
    if str(home / "mnt" / SESSION) in mounted_points():
        run_cli("umount", str(home / "mnt" / SESSION), home=home, check=False)
    assert str(home / "mnt" / SESSION) not in mounted_points(), "mount left behind"


def _wait_gone(pid: int) -> None:
    """Wait (bounded) until process `pid` exits: its pidfd becomes readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], BOOT_TIMEOUT_S)
        assert ready, f"process {pid} still running after {BOOT_TIMEOUT_S}s"
    finally:
        os.close(fd)


def _text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


def _astrid(site: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    """`astrid ...` from another shell, as the person answering asks runs it."""
    return subprocess.run([sys.executable, "-m", "astrid_runtime.client_cli", "--socket",
                           str(site["socket"]), *args], capture_output=True, text=True,
                          check=False, timeout=60, cwd=REPO,
                          env={**os.environ, "ASTRID_HOME": str(site["home"])})


def _next_ask(site: dict[str, Path], started: trio.Event | None = None) -> Any:
    """Block (in a worker thread) until an ask is published on the bus; its body."""
    import base64

    events = ControlClient(site["socket"]).stream({"op": "tail",
                                                  "pattern": "approval.requested"})
    for event in events:
        if event.get("ok"):
            if started is not None:
                trio.from_thread.run_sync(started.set)
            continue
        return json.loads(base64.b64decode(event["payload"]))
    raise AssertionError("tail ended before an ask")


def test_commands_say_what_the_file_tool_reads() -> None:
    assert command("write", "a/b.md", "two\nlines") == "write a/b.md two\nlines"
    assert command("replace", "x.md", "old word", "it's") == \
        "replace x.md 'old word' 'it'\"'\"'s'"
    assert command("ls", "") == "ls" and command("commit") == "commit"
    for bad in (("write", "has space.md", "x"), ("write", "", "x"), ("append", "a", "  "),
                ("replace", "a", "", "b"), ("chmod", "a")):
        with pytest.raises(ToolRequestError):
            command(*bad)


async def test_mcp_client_edits_the_session_under_approvals(site: dict[str, Path]) -> None:
    project, errlog = site["project"], (site["root"] / "mcp.err").open("w+")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "astrid_runtime.client_cli", "--lockfile", str(site["lock"]), "mcp",
              "--session", SESSION, "--lower", str(project), "--socket", str(site["socket"]),
              "--dashboard"],
        env={**os.environ, "ASTRID_HOME": str(site["home"]), "PYTHONUNBUFFERED": "1"},
        cwd=str(REPO))

    def server_said() -> str:
        errlog.seek(0)
        return errlog.read()

    async with stdio_client(params, errlog=errlog) as (read, write), \
            ClientSession(read, write) as client:
        with trio.fail_after(BOOT_TIMEOUT_S):
            await client.initialize()
        state = open_session(SESSION, site["home"]).mount_state()
        assert state is not None and state.alive(), server_said()
        daemon_pid = state.pid
        with trio.fail_after(CALL_TIMEOUT_S):
            listed = await client.list_tools()
        names = {t.name for t in listed.tools}
        assert names == {"read_file", "write_file", "append_file", "replace_in_file",
                         "list_directory", "session_diff", "commit_session"}, names
        schema = next(t for t in listed.tools if t.name == "write_file").input_schema
        assert set(schema["required"]) == {"path", "content"}, schema

        with trio.fail_after(CALL_TIMEOUT_S):
            wrote = await client.call_tool("write_file", {"path": "docs/NOTES.md",
                                                          "content": "hello from mcp"})
            assert not wrote.is_error and "Wrote docs/NOTES.md" in _text(wrote), wrote
            fixed = await client.call_tool("replace_in_file", {"path": "docs/NOTES.md",
                                                               "old": "mcp", "new": "MCP"})
            assert not fixed.is_error, fixed
            read_back = await client.call_tool("read_file", {"path": "docs/NOTES.md"})
            assert _text(read_back) == "hello from MCP\n"
            listing = await client.call_tool("list_directory", {})
            assert "docs/" in _text(listing).splitlines(), _text(listing)
            # Out of the workspace: refused by the kernel, not written anywhere.
            for path in ("../escape.md", "/tmp/escape.md"):
                escaped = await client.call_tool("write_file", {"path": path,
                                                                "content": "out"})
                assert escaped.is_error and "refused" in _text(escaped), _text(escaped)
            assert not (project.parent / "escape.md").exists()
        # The edit is in the session, not yet in the project.
        assert not (project / "docs" / "NOTES.md").exists()
        diff = run_cli("diff", "--stat", SESSION, home=site["home"])
        assert "docs/NOTES.md" in diff.stdout, diff.stdout
        with trio.fail_after(CALL_TIMEOUT_S):
            patch = _text(await client.call_tool("session_diff", {}))
        assert "docs/NOTES.md" in patch and "+hello from MCP" in patch, patch

        # A commit asks a person; the call waits until they answer (first no, then yes).
        ask, denied = await _commit_answered(client, site, _deny_with_cli(site))
        assert (ask["plugin"], ask["kind"], ask["resource"]) == (
            "filetool", "fs.commit", "workspace/docs/NOTES.md"), ask
        assert denied.is_error and "a person declined: not yet" in _text(denied), denied
        assert not (project / "docs" / "NOTES.md").exists()
        login = next(line.removeprefix("astrid: dashboard ") for line in
                     server_said().splitlines() if line.startswith("astrid: dashboard "))
        _, approved = await _commit_answered(client, site, _approve_in_dashboard(login))
        assert not approved.is_error and "Committed session" in _text(approved), approved
        assert (project / "docs" / "NOTES.md").read_text() == "hello from MCP\n"
    # The client closed stdin (and, after its 2 s grace, killed the server's process
    # group): the unmount, in its own session, still completes; the daemon exits after it.
    _wait_gone(daemon_pid)
    assert str(site["mount"]) not in mounted_points(), server_said()
    audit = [json.loads(line) for line in (site["home"] / "audit.jsonl").read_text().splitlines()]
    refused = [e for e in audit if e["event"] == "vfs.refused"]
    assert {e["plugin"] for e in refused} == {"filetool"} and len(refused) >= 2, refused
    decisions = [(e["decision"], e.get("by")) for e in audit if e["event"] == "cap.decision"]
    assert decisions[-2:] == [("deny", "cli"), ("allow", "plugin:dashboard")], decisions


async def _commit_answered(client: ClientSession, site: dict[str, Path],
                           answer: Callable[[dict[str, Any]], None]) -> tuple[Any, Any]:
    """Call commit_session while a person waits for its ask and answers it with `answer`
    (run in a worker thread); (the ask, the call's result)."""
    listening = trio.Event()
    seen: dict[str, Any] = {}

    async def person() -> None:
        ask = await trio.to_thread.run_sync(_next_ask, site, listening, abandon_on_cancel=True)
        assert "result" not in seen, "the commit returned before a person answered"
        seen["ask"] = ask
        await trio.to_thread.run_sync(answer, ask)

    with trio.fail_after(CALL_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(person)
            await listening.wait()
            seen["result"] = await client.call_tool("commit_session",
                                                    {"paths": ["docs/NOTES.md"]})
    return seen["ask"], seen["result"]


def _deny_with_cli(site: dict[str, Path]) -> Callable[[dict[str, Any]], None]:
    def deny(ask: dict[str, Any]) -> None:
        done = _astrid(site, "deny", ask["id"], "not yet")
        assert done.returncode == 0, done.stderr
    return deny


def _approve_in_dashboard(login_url: str) -> Callable[[dict[str, Any]], None]:
    """What the dashboard page's "Approve once" button sends (test_dashboard.py clicks it
    in a real browser) to the dashboard plugin; here over plain HTTP, logged in with the
    printed token."""
    origin, token = login_url.split("/login?token=")
    base = origin + "/plugin/dashboard"
    cookie = {"Cookie": f"astrid_dashboard={token}"}

    def approve(ask: dict[str, Any]) -> None:
        with urllib.request.urlopen(urllib.request.Request(
                base + "/api/state", headers=cookie), timeout=CALL_TIMEOUT_S) as state:
            pending = json.loads(state.read())["approvals"]["pending"]
        assert [a["id"] for a in pending] == [ask["id"]], pending
        request = urllib.request.Request(
            f"{base}/api/approvals/{ask['id']}", data=b"answer=once",
            headers={**cookie, "Content-Type": "application/x-www-form-urlencoded",
                     "X-Astrid-Dashboard": "1"})
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as done:
            assert json.loads(done.read()) == {"id": ask["id"], "answer": "once"}
    return approve
