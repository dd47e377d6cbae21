"""`astrid dashboard`: a person approves a commit in a real headless browser.

Real parts only: `astrid dashboard` in a subprocess mounts a real astrid-fs
session (FUSE) and boots the real kernel with the pinned file tool
(WebAssembly); the kernel listens on 127.0.0.1. Debian's `chromium`, headless
and driven over the DevTools protocol on a pipe, logs in with the printed
token, shows the session's diff and the live bus, and clicks "Approve once"
on the file tool's `fs.commit` ask; the commit lands in the project. Waits
are bounded reads (a queue, a pipe with a timeout, a MutationObserver in the
page), never sleeps.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from astrid_runtime import client_cli
from astrid_runtime.control import ControlClient
from astrid_runtime.lockfile import Lockfile, load_lockfile
from tests.support.mounts import mounted_points, require_fuse, run_cli
from tests.support.warmhome import seed_home

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "scripts" / "demo" / "sample-project"
BOOT_TIMEOUT_S = 300
WAIT_S = 60
SESSION = "dash-e2e"


class Chromium:
    """Headless chromium driven over --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self, profile: Path):
        exe = shutil.which("chromium")
        assert exe, "Debian's chromium is missing: scripts/setup.d/50-chromium.sh installs it"
        to_chrome, self._commands = os.pipe()
        self._replies, from_chrome = os.pipe()

        def wire() -> None:
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        # close_fds=False: the two dup2'd descriptors must survive into chromium; ours
        # are close-on-exec (PEP 446), so nothing else leaks.
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._next_id = 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.page = self.send("Target.attachToTarget", {"targetId": target,
                                                        "flatten": True})["sessionId"]

    def send(self, method: str, params: dict[str, Any], session: str | None = None,
             timeout_s: float = WAIT_S) -> dict[str, Any]:
        self._next_id += 1
        wanted = self._next_id
        command: dict[str, Any] = {"id": wanted, "method": method, "params": params}
        if session:
            command["sessionId"] = session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                ready, _, _ = select.select([self._replies], [], [], timeout_s)
                assert ready, f"chromium did not answer {method} within {timeout_s}s"
                chunk = os.read(self._replies, 1 << 16)
                assert chunk, "chromium closed its pipe"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == wanted:
                assert "error" not in reply, reply
                result: dict[str, Any] = reply["result"]
                return result

    def evaluate(self, script: str) -> Any:
        """Run `script` (an expression, awaited if a promise) in the page; its value."""
        done = self.send("Runtime.evaluate", {"expression": script, "awaitPromise": True,
                                              "returnByValue": True}, self.page)
        assert "exceptionDetails" not in done, done
        return done["result"].get("value")

    def wait_for(self, predicate: str) -> Any:
        """Wait until the JS expression `predicate` is truthy (checked on each DOM change,
        bounded by WAIT_S); its value."""
        return self.evaluate(f"""new Promise((resolve, reject) => {{
            const check = () => {{ try {{ const v = ({predicate}); if (v) {{
                observer.disconnect(); clearTimeout(timer); resolve(v); }} }}
                catch (e) {{}} }};
            const observer = new MutationObserver(check);
            const timer = setTimeout(() => {{ observer.disconnect();
                reject(new Error('timed out: ' + {json.dumps(predicate)})); }},
                {WAIT_S * 1000});
            observer.observe(document, {{subtree: true, childList: true, attributes: true,
                                         characterData: true}});
            check(); }})""")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, self.page)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self._commands)
        os.close(self._replies)


class Tail:
    """`tail PATTERN` on the control socket, read by a thread into a queue."""

    def __init__(self, socket: Path, pattern: str):
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        started = threading.Event()

        def read() -> None:
            for event in ControlClient(socket).stream({"op": "tail", "pattern": pattern}):
                if event.get("ok"):
                    started.set()
                    continue
                self.messages.put(json.loads(base64.b64decode(event["payload"])))

        threading.Thread(target=read, daemon=True).start()
        assert started.wait(WAIT_S), "tail did not start"

    def next(self) -> dict[str, Any]:
        return self.messages.get(timeout=WAIT_S)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory,
              shipped_home: Path) -> Iterator[dict[str, Any]]:
    """`astrid dashboard` over a copy of the sample project, pinning only the file tool."""
    require_fuse()
    root = tmp_path_factory.mktemp("dash")
    home, project = root / "home", root / "project"
    seed_home(home, shipped_home)  # the run's compile cache (tests/support/warmhome.py)
    shutil.copytree(SAMPLE, project)
    entry = load_lockfile(REPO / "plugins.lock", missing_ok=False).get("filetool")
    assert entry is not None
    lock = Lockfile(root / "plugins.lock", (entry,))
    lock.save()
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


def _http(url: str, *, headers: dict[str, str] | None = None,
          body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_without_the_token_nothing_is_served(dashboard: dict[str, Any]) -> None:
    base = dashboard["url"].split("/login")[0]
    assert _http(base + "/api/state") == 401
    assert _http(base + "/") == 401
    assert _http(base + "/login?token=wrong") == 403
    cookie = {"Cookie": "astrid_dashboard=" + dashboard["url"].split("token=")[1]}
    assert _http(base + "/api/state", headers=cookie) == 200
    # Logged in, but another site's page cannot post (no custom header) ...
    assert _http(base + "/api/approvals/x", headers=cookie, body=b'{"answer":"once"}') == 403
    # ... and a rebinding DNS name is not this dashboard.
    assert _http(base + "/api/state", headers={**cookie, "Host": "evil.example:80"}) == 421
    assert _http(base + "/api/diff?session=../x", headers=cookie) == 400


def test_a_person_approves_a_commit_in_the_browser(dashboard: dict[str, Any]) -> None:
    site, project = dashboard, dashboard["project"]
    replies = Tail(site["socket"], "agent.response")
    _astrid(site, "publish", "tools.fs", "write NOTES.md hello from the dashboard test")
    assert replies.next()["ok"] is True
    browser = Chromium(site["root"] / "chromium-profile")
    try:
        browser.navigate(site["url"])
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
        assert browser.wait_for("document.getElementById('answered').textContent"
                                ".startsWith('answered')")
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
    assert decisions[-1] == ("allow", "dashboard"), decisions


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
