"""The kernel's side of the dashboard: who may ask (the Host header, the login token
and its cookie, the POST header), where a request goes, and the live bus.

The routes and pages are not here: `/plugin/NAME/...` is handed to the frontend
plugin NAME (frontend.py), whose pinned grant names `http.serve`; `/` sends the
browser to the default frontend, `dashboard`. What the plugin may learn comes
through `astrid:kernel/dashboard` (`KernelView`, host.py); it answers an ask by
publishing on `approval.answer`, the bus path any frontend plugin takes
(docs/approval.md). The live bus stays a kernel-served event stream,
`/kernel/bus`: a plugin call answers once, it cannot stream.
"""

from __future__ import annotations

import hmac
import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from astrid_fs.errors import AstridFsError
from astrid_fs.pyexec import python_module
from astrid_fs.session import check_name, list_sessions
from astrid_runtime.approval.service import Approvals
from astrid_runtime.bus import Bus, Tap
from astrid_runtime.dashboard.frontend import CSP, hand_off, serves_http
from astrid_runtime.dashboard.http import Request, Response
from astrid_runtime.errors import Refusal
from astrid_runtime.supervisor import Supervisor

COOKIE = "astrid_dashboard"
#: A bus payload is shown up to this many characters.
SHOWN_PAYLOAD = 2000
#: The frontend plugin `/` leads to.
DEFAULT_FRONTEND = "dashboard"
PLUGIN_PREFIX = "/plugin/"
BUS_PATH = "/kernel/bus"


@dataclass
class KernelView:
    """`FrontendData` for a kernel over one session: what `astrid:kernel/dashboard`
    answers. Called in a guest's worker thread; kernel state is read in the trio
    thread."""

    approvals: Approvals
    home: Path
    session: str
    status: Callable[[], dict[str, Any]]
    trio_token: trio.lowlevel.TrioToken

    def _snapshot(self) -> dict[str, Any]:
        plugins = [{"name": p["name"], "state": p["state"]}
                   for p in self.status().get("plugins", [])]
        return {"session": self.session, "plugins": plugins,
                "approvals": self.approvals.listing()}

    def state(self) -> str:
        body = trio.from_thread.run_sync(self._snapshot, trio_token=self.trio_token)
        body["sessions"] = [{"name": s.name, "lower": str(s.lower)}
                            for s in list_sessions(self.home)]
        return json.dumps(body)

    def diff(self, session: str) -> str:
        try:
            check_name(session)
        except AstridFsError as e:
            raise Refusal("invalid", str(e)) from None
        ok, text = session_patch(self.home, session)
        if not ok:
            raise Refusal("not-found", text)
        return text


@dataclass
class Dashboard:
    """The kernel's HTTP front door over one session (see the module)."""

    bus: Bus
    token: str
    #: The running plugins by name (the kernel's supervisors).
    plugins: Callable[[], dict[str, Supervisor]]
    #: `host:port` values a request may name (DNS rebinding: any other Host is refused).
    hosts: frozenset[str] = frozenset()

    # -- access -----------------------------------------------------------------

    def _logged_in(self, request: Request) -> bool:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(request.headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is simply not a login
            return False
        morsel = jar.get(COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value, self.token)

    def _login(self, query: dict[str, list[str]]) -> Response:
        given = (query.get("token") or [""])[0]
        if not hmac.compare_digest(given, self.token):
            return Response(403, b"wrong or missing token")
        cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
        return Response(303, b"", headers=(("Location", "/"), ("Set-Cookie", cookie)))

    async def handle(self, request: Request) -> Response:
        """Answer one request: every path but /login needs the login cookie, and nothing
        reaches a plugin before the checks."""
        if self.hosts and request.headers.get("host") not in self.hosts:
            return Response(421, b"unknown host")
        url = urlsplit(request.target)
        if request.method == "GET" and url.path == "/login":
            return self._login(parse_qs(url.query))
        if not self._logged_in(request):
            return Response(401, b"log in with the URL astrid printed (/login?token=...)")
        if request.method not in ("GET", "POST"):
            return Response(405, b"GET or POST only")
        # A custom header cannot be sent cross-site without a preflight we never allow.
        if request.method == "POST" and request.headers.get("x-astrid-dashboard") != "1":
            return Response(403, b"missing X-Astrid-Dashboard header")
        if url.path == "/":
            return Response(303, b"", headers=(
                ("Location", f"{PLUGIN_PREFIX}{DEFAULT_FRONTEND}/"),))
        if url.path == BUS_PATH and request.method == "GET":
            return Response(200, content_type="text/event-stream", stream=self._bus_events,
                            headers=(("Content-Security-Policy", CSP),))
        if url.path.startswith(PLUGIN_PREFIX):
            name, slash, rest = url.path.removeprefix(PLUGIN_PREFIX).partition("/")
            sup = self.plugins().get(name)
            if sup is None or not serves_http(sup):
                return Response(404, f"no frontend plugin {name!r}".encode())
            if not slash:  # the page's relative links need the slash
                return Response(308, b"", headers=(("Location", f"{url.path}/"),))
            return await hand_off(sup, request.method, "/" + rest, url.query,
                                  request.headers, request.body)
        return Response(404, b"not found")

    async def _bus_events(self) -> AsyncIterator[bytes]:
        tap = Tap(self.bus, ">")
        try:
            yield b": astrid bus\n\n"
            while True:
                message = await tap.receive()
                text = message.payload.decode("utf-8", "replace")[:SHOWN_PAYLOAD]
                event = {"topic": message.topic, "publisher": message.publisher,
                         "payload": text}
                yield b"data: " + json.dumps(event).encode() + b"\n\n"
        finally:
            tap.close()


def session_patch(home: Path, name: str) -> tuple[bool, str]:
    """(ok, text): `astrid-fs diff --patch NAME` of the session under `home`, or why not.
    Blocking (a subprocess): run it in a worker thread."""
    argv = python_module("astrid_fs.cli", "diff", "--patch", "--", name)
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120,
                          env={**os.environ, "ASTRID_HOME": str(home)},
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        return False, done.stderr.strip() or "no diff"
    return True, done.stdout or "(no changes)\n"


__all__ = ["BUS_PATH", "COOKIE", "Dashboard", "KernelView", "session_patch"]
