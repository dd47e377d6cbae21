"""Debian's headless chromium, driven over the DevTools protocol on a pipe.

No WebDriver, no network port: `--remote-debugging-pipe` gives the test two
file descriptors (3 in, 4 out) carrying NUL-separated JSON. Waits are bounded
reads of that pipe and, in the page, a MutationObserver with a timeout;
never sleeps. `scripts/setup.d/50-chromium.sh` installs chromium; a test that
needs it fails when it is missing.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
from pathlib import Path
from typing import Any

#: The bound of every wait on the browser.
WAIT_S = 60


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


__all__ = ["WAIT_S", "Chromium"]
