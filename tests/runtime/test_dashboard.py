"""`astrid dashboard`: a person approves a commit in a real headless browser, on
pages the frontend plugin serves.

Real parts only: `astrid dashboard` in a subprocess mounts a real astrid-fs
session (FUSE) and boots the real kernel with the pinned file tool and the
pinned `dashboard` frontend plugin (WebAssembly); the kernel listens on
127.0.0.1, checks the login and hands the pages' requests to the plugin.
Debian's `chromium`, headless and driven over the DevTools protocol on a pipe
(tests/support/chromium.py), logs in with the printed token, shows the
session's diff and the live bus, and clicks "Approve once" on the file tool's
`fs.commit` ask; the plugin publishes the answer and the commit lands in the
project. Waits are bounded reads (a queue, a pipe with a timeout, a
MutationObserver in the page), never sleeps.

The in-process tests boot a kernel with the real dashboard component under
altered pins (no grant, tiny fuel) and call the kernel's front door
(`Dashboard.handle`) directly: what the kernel does around the plugin.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from testkit import ExpectedLogs

from astrid_runtime import client_cli
from astrid_runtime.dashboard.app import Dashboard
from astrid_runtime.dashboard.frontend import kept_headers
from astrid_runtime.dashboard.http import MAX_BODY, Request, Response
from astrid_runtime.engine import KernelEngine
from astrid_runtime.kernel import BootPlan, Kernel, open_kernel
from astrid_runtime.lockfile import LockEntry, Lockfile, load_lockfile
from astrid_runtime.supervisor import State
from tests.support.bustail import Tail
from tests.support.chromium import Chromium
from tests.support.mounts import mounted_points, require_fuse, run_cli
from tests.support.warmhome import pinned_subset, seed_home

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "scripts" / "demo" / "sample-project"
BOOT_TIMEOUT_S = 300
WAIT_S = 60
SESSION = "dash-e2e"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory,
              shipped_home: Path) -> Iterator[dict[str, Any]]:
    """`astrid dashboard` over a copy of the sample project, pinning the file tool and the
    dashboard plugin."""
    require_fuse()
    root = tmp_path_factory.mktemp("dash")
    home, project = root / "home", root / "project"
    seed_home(home, shipped_home)  # the run's compile cache (tests/support/warmhome.py)
    shutil.copytree(SAMPLE, project)
    lock = load_lockfile(pinned_subset(root / "plugins.lock", ("filetool", "dashboard")),
                         missing_ok=False)
    socket = root / "ctl.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "astrid_runtime.client_cli", "--lockfile", str(lock.path),
         "dashboard", "--session", SESSION, "--lower", str(project), "--socket", str(socket)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "ASTRID_HOME": str(home)}, cwd=REPO)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    said: list[str] = []
    url = ""
    try:
        while " mounted at " not in (said[-1] if said else ""):
            line = lines.get(timeout=BOOT_TIMEOUT_S)
            assert line is not None, f"astrid dashboard exited: {said}"
            said.append(line)
            if line.startswith("astrid: dashboard "):
                url = line.removeprefix("astrid: dashboard ")
        assert url.startswith("http://127.0.0.1:"), said
        yield {"url": url, "home": home, "project": project, "socket": socket,
               "root": root, "said": said}
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=BOOT_TIMEOUT_S)
        mount = str(home / "mnt" / SESSION)
        if mount in mounted_points():
            run_cli("umount", mount, home=home, check=False)
        assert code == 0 and mount not in mounted_points(), said


def _astrid(site: dict[str, Any], *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "astrid_runtime.client_cli", "--socket",
                           str(site["socket"]), *args], capture_output=True, text=True,
                          check=False, timeout=WAIT_S, cwd=REPO,
                          env={**os.environ, "ASTRID_HOME": str(site["home"])})
    assert done.returncode == 0, done.stderr


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _http(url: str, *, headers: dict[str, str] | None = None,
          body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; redirects are not followed."""
    request = urllib.request.Request(url, data=body, headers=headers or {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=WAIT_S) as answer:
            return int(answer.status), dict(answer.headers.items()), answer.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def test_the_kernel_checks_every_request_before_the_plugin_sees_it(
        dashboard: dict[str, Any]) -> None:
    base = dashboard["url"].split("/login")[0]
    api = base + "/plugin/dashboard/api"
    assert _http(api + "/state")[0] == 401
    assert _http(base + "/")[0] == 401
    assert _http(base + "/kernel/bus")[0] == 401
    assert _http(base + "/login?token=wrong")[0] == 403
    cookie = {"Cookie": "astrid_dashboard=" + dashboard["url"].split("token=")[1]}
    status, headers, body = _http(api + "/state", headers=cookie)
    assert status == 200 and headers["Content-Type"] == "application/json", (status, body)
    assert json.loads(body)["session"] == SESSION
    assert headers["Content-Security-Policy"].startswith("default-src 'self'"), headers
    # `/` leads to the default frontend; a plugin that is not a frontend is not served.
    status, headers, _ = _http(base + "/", headers=cookie)
    assert (status, headers["Location"]) == (303, "/plugin/dashboard/")
    assert _http(base + "/plugin/filetool/", headers=cookie)[0] == 404
    # Logged in, but another site's page cannot post (no custom header) ...
    assert _http(api + "/approvals/x", headers=cookie, body=b"answer=once")[0] == 403
    # ... a body over the bound never reaches the plugin ...
    big = {**cookie, "X-Astrid-Dashboard": "1"}
    assert _http(api + "/approvals/x", headers=big, body=b"r" * (MAX_BODY + 1))[0] == 413
    # ... and a rebinding DNS name is not this dashboard.
    assert _http(api + "/state", headers={**cookie, "Host": "evil.example:80"})[0] == 421
    # The plugin's own refusals: a bad session name (the kernel's `invalid`), a bad answer.
    status, _, body = _http(api + "/diff?session=../x", headers=cookie)
    assert status == 400 and b"invalid session name" in body, body
    assert _http(api + "/approvals/x", headers=big, body=b"answer=maybe")[0] == 400


def test_a_person_approves_a_commit_in_the_browser(dashboard: dict[str, Any]) -> None:
    site, project = dashboard, dashboard["project"]
    replies = Tail(site["socket"], "agent.response")
    _astrid(site, "publish", "tools.fs", "write NOTES.md hello from the dashboard test")
    assert replies.next()["ok"] is True
    browser = Chromium(site["root"] / "chromium-profile")
    try:
        browser.navigate(site["url"])  # login -> / -> /plugin/dashboard/
        assert browser.wait_for("document.body && document.body.dataset.ready === '1'")
        assert browser.evaluate("document.getElementById('session').textContent") == SESSION
        # The session's diff, shown for the current session at load.
        diff = browser.wait_for("document.getElementById('diff').textContent"
                                ".includes('NOTES.md') && "
                                "document.getElementById('diff').textContent")
        assert "+hello from the dashboard test" in diff, diff
        # An edit while the page is open: the diff follows (the tool's answer on the bus).
        _astrid(site, "publish", "tools.fs", "append NOTES.md a second line")
        assert replies.next()["ok"] is True
        assert browser.wait_for("document.getElementById('diff').textContent"
                                ".includes('+a second line')")
        # An ask arrives while the page is open: the live bus brings it.
        _astrid(site, "publish", "tools.fs", "commit NOTES.md")
        asked = browser.wait_for("document.querySelector('.ask')?.textContent")
        assert "filetool asks fs.commit on workspace/NOTES.md" in asked, asked
        assert not (project / "NOTES.md").exists()
        browser.evaluate("document.querySelector('.ask button[data-answer=once]').click()")
        committed = replies.next()
        assert committed["plugin"] == "kernel" and committed["ok"] is True, committed
        assert (project / "NOTES.md").read_text() == ("hello from the dashboard test\n"
                                                      "a second line\n")
        answered = browser.wait_for("document.getElementById('answered').textContent"
                                    ".startsWith('answered') && "
                                    "document.getElementById('answered').textContent")
        assert answered.endswith(": once by plugin:dashboard"), answered
        assert browser.evaluate("location.pathname") == "/plugin/dashboard/"
        topics = browser.wait_for(
            "[...document.querySelectorAll('#bus li')].map(li => li.dataset.topic)"
            ".filter(t => t === 'approval.answered').length && "
            "[...document.querySelectorAll('#bus li')].map(li => li.dataset.topic)")
        assert {"tools.fs", "approval.requested", "approval.answered"} <= set(topics), topics
        assert browser.wait_for("document.querySelector('.ask') === null")
    finally:
        browser.close()
    audit = [json.loads(line) for line in
             (site["home"] / "audit.jsonl").read_text().splitlines()]
    decisions = [(e["decision"], e.get("by")) for e in audit if e["event"] == "cap.decision"]
    assert decisions[-1] == ("allow", "plugin:dashboard"), decisions


@pytest.mark.parametrize(("args", "message"), [
    (["dashboard", "--session", "x", "--port", "70000"], "--port 70000: not a TCP port"),
    (["dashboard", "--session", "../x"], "--session"),
    (["mcp", "--session", "x", "--dashboard-port", "-1"], "--dashboard-port -1"),
    (["mcp", "--session", "x", "--lower", "/no/such/dir"], "--lower /no/such/dir"),
])
def test_bad_input_is_one_line_before_mounting(tmp_path: Path, args: list[str], message: str,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path))
    code = client_cli.main(["--lockfile", str(REPO / "plugins.lock"), *args])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "mnt").exists()


# -- the kernel around the plugin, in process -------------------------------------

TOKEN = "t0ken"
HOST = "127.0.0.1:8377"


def _pin(**changes: Any) -> LockEntry:
    entry = load_lockfile(REPO / "plugins.lock", missing_ok=False).get("dashboard")
    assert entry is not None
    limits = changes.pop("limits", {})
    grants = changes.pop("grants", {})
    return dataclasses.replace(entry, limits=dataclasses.replace(entry.limits, **limits),
                               grants=dataclasses.replace(entry.grants, **grants))


@pytest.fixture
async def front(tmp_path: Path, request: pytest.FixtureRequest, expect_logs: ExpectedLogs
                ) -> AsyncIterator[tuple[Kernel, Dashboard]]:
    """A kernel running the real dashboard component under the pin the test names
    (`@pytest.mark.parametrize("front", [{...}], indirect=True)`), and its front door."""
    expect_logs.allow("plugin.asks_more_than_granted")  # the pin is narrower on purpose
    lock = Lockfile(tmp_path / "plugins.lock", (_pin(**request.param),))
    lock.save()
    engine = KernelEngine(cache_dir=tmp_path / "cache")
    async with open_kernel(engine) as kernel:
        await kernel.boot(BootPlan(lock.path, (REPO / "plugins" / "dashboard",)))
        sup = kernel.supervisors["dashboard"]
        with trio.fail_after(WAIT_S):
            await sup.wait_for(lambda s: s.state is State.RUNNING)
        yield kernel, Dashboard(kernel.bus, TOKEN, lambda: kernel.supervisors,
                                frozenset({HOST}))


async def _get(door: Dashboard, target: str, method: str = "GET",
               body: bytes = b"") -> Response:
    headers = {"host": HOST, "cookie": f"astrid_dashboard={TOKEN}",
               "x-astrid-dashboard": "1"}
    return await door.handle(Request(method, target, headers, body))


@pytest.mark.parametrize("front", [{"limits": {"fuel_per_call": 2_000_000}}], indirect=True)
async def test_a_trap_is_a_500_for_that_request_and_the_plugin_restarts(
        front: tuple[Kernel, Dashboard], expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.crashed")
    kernel, door = front
    sup = kernel.supervisors["dashboard"]
    page = await _get(door, "/plugin/dashboard/")
    assert page.status == 200 and b"<title>Astrid</title>" in page.body
    assert dict(page.headers)["Content-Security-Policy"].startswith("default-src 'self'")
    # Decoding and escaping a 60 KiB answer reason takes more than 2M fuel: the guest traps.
    reason = b"%41" * (60 * 1024 // 3)
    crashed = await _get(door, "/plugin/dashboard/api/approvals/abc", "POST",
                         b"answer=deny&reason=" + reason)
    assert crashed.status == 500 and b"fuel exhausted" in crashed.body, crashed
    with trio.fail_after(WAIT_S):
        await sup.wait_for(lambda s: s.state is State.RUNNING and s.restarts == 1)
    assert sup.crashes == 1
    again = await _get(door, "/plugin/dashboard/app.js")
    assert again.status == 200 and b"EventSource('/kernel/bus')" in again.body
    # Without a dashboard service the plugin's host call is refused, and it says so.
    state = await _get(door, "/plugin/dashboard/api/state")
    assert state.status == 503 and b"serves no dashboard" in state.body, state


@pytest.mark.parametrize("front", [{"grants": {"cap": ("dashboard.read",)}}], indirect=True)
async def test_without_the_http_serve_grant_nothing_reaches_the_plugin(
        front: tuple[Kernel, Dashboard]) -> None:
    kernel, door = front
    answer = await _get(door, "/plugin/dashboard/")
    assert answer.status == 404 and b"no frontend plugin 'dashboard'" in answer.body
    assert kernel.supervisors["dashboard"].state is State.RUNNING


@pytest.mark.parametrize("front", [{"grants": {"cap": ("http.serve",)}}], indirect=True)
async def test_without_the_read_grant_the_kernel_tells_the_plugin_nothing(
        front: tuple[Kernel, Dashboard], tmp_path: Path) -> None:
    kernel, door = front
    sup = kernel.supervisors["dashboard"]
    # A view that would answer: the grant alone stops it (it is never called).
    sup.context.frontend = _Unreachable()
    answer = await _get(door, "/plugin/dashboard/api/state")
    assert answer.status == 403 and b"dashboard.read is not in plugin dashboard's cap grant" \
        in answer.body, answer
    answer = await _get(door, "/plugin/dashboard/api/diff?session=x")
    assert answer.status == 403


def test_the_plugin_sets_only_content_type_and_a_same_site_location() -> None:
    kept = kept_headers([
        ("Set-Cookie", "astrid_dashboard=forged"), ("Content-Security-Policy", "default-src *"),
        ("Location", "//evil.example/"), ("location", "https://evil.example/"),
        ("Content-Type", "text/html\r\nX-Injected: 1"), ("Location", "/plugin/dashboard/"),
        ("content-type", "text/plain"), ("Access-Control-Allow-Origin", "*")])
    assert kept == (("location", "/plugin/dashboard/"), ("content-type", "text/plain"))


class _Unreachable:
    """A `FrontendData` that fails the test when the kernel consults it."""

    def state(self) -> str:
        raise AssertionError("state() called without the dashboard.read grant")

    def diff(self, session: str) -> str:
        raise AssertionError("diff() called without the dashboard.read grant")
