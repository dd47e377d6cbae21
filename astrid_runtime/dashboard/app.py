"""The dashboard's routes: login by token, the state, a session's diff, the live bus,
and answering an ask. Everything the browser can change goes through `Approvals.answer`,
the path `astrid approve` and the terminal take (by "dashboard")."""

from __future__ import annotations

import hmac
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from astrid_fs.errors import AstridFsError
from astrid_fs.session import check_name, list_sessions
from astrid_runtime.approval.service import Approvals
from astrid_runtime.bus import Bus, Tap
from astrid_runtime.dashboard.http import Request, Response
from astrid_runtime.dashboard.page import PAGE, SCRIPT
from astrid_runtime.errors import Refusal

COOKIE = "astrid_dashboard"
#: A bus payload is shown up to this many characters.
SHOWN_PAYLOAD = 2000
ANSWERS = ("once", "session", "always", "deny")
CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


@dataclass
class Dashboard:
    """The dashboard of one kernel over one session."""

    approvals: Approvals
    bus: Bus
    home: Path
    session: str
    token: str
    status: Callable[[], dict[str, Any]]
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
        """Answer one request (every path but /login needs the login cookie)."""
        if self.hosts and request.headers.get("host") not in self.hosts:
            return Response(421, b"unknown host")
        url = urlsplit(request.target)
        query = parse_qs(url.query)
        if request.method == "GET" and url.path == "/login":
            return self._login(query)
        if not self._logged_in(request):
            return Response(401, b"log in with the URL astrid printed (/login?token=...)")
        if request.method == "POST":
            # A custom header cannot be sent cross-site without a preflight we never allow.
            if request.headers.get("x-astrid-dashboard") != "1":
                return Response(403, b"missing X-Astrid-Dashboard header")
            if url.path.startswith("/api/approvals/"):
                return self._answer(url.path.removeprefix("/api/approvals/"), request.body)
            return Response(404, b"no such action")
        routes = {"/": self._page, "/app.js": self._script, "/api/state": self._state}
        if url.path in routes:
            return routes[url.path]()
        if url.path == "/api/diff":
            return await self._diff((query.get("session") or [""])[0])
        if url.path == "/api/bus":
            return Response(200, content_type="text/event-stream", stream=self._bus_events)
        return Response(404, b"not found")

    # -- pages ---------------------------------------------------------------------

    def _page(self) -> Response:
        return Response(200, PAGE, "text/html; charset=utf-8",
                        headers=(("Content-Security-Policy", CSP),))

    def _script(self) -> Response:
        return Response(200, SCRIPT, "text/javascript; charset=utf-8")

    def _state(self) -> Response:
        sessions = [{"name": s.name, "lower": str(s.lower)} for s in list_sessions(self.home)]
        plugins = [{"name": p["name"], "state": p["state"]}
                   for p in self.status().get("plugins", [])]
        body = {"session": self.session, "sessions": sessions, "plugins": plugins,
                "approvals": self.approvals.listing()}
        return _json(200, body)

    async def _diff(self, name: str) -> Response:
        try:
            check_name(name)
        except AstridFsError as e:
            return Response(400, str(e).encode())
        ok, text = await trio.to_thread.run_sync(session_patch, self.home, name)
        return Response(200 if ok else 404, text.encode())

    def _answer(self, ask_id: str, body: bytes) -> Response:
        try:
            sent = json.loads(body)
            how, reason = sent["answer"], str(sent.get("reason", ""))
        except (ValueError, KeyError, TypeError):
            return Response(400, b'want JSON {"answer": "once|session|always|deny"}')
        if how not in ANSWERS:
            return Response(400, b"answer must be once, session, always or deny")
        try:
            ask = self.approvals.answer(ask_id, how, reason, "dashboard")
        except Refusal as e:
            return Response(409, e.message.encode())
        return _json(200, {"id": ask.id, "answer": how})

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
    argv = [sys.executable, "-m", "astrid_fs.cli", "diff", "--patch", "--", name]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120,
                          env={**os.environ, "ASTRID_HOME": str(home)},
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        return False, done.stderr.strip() or "no diff"
    return True, done.stdout or "(no changes)\n"


def _json(status: int, body: object) -> Response:
    return Response(status, json.dumps(body).encode(), "application/json")


__all__ = ["COOKIE", "Dashboard", "session_patch"]
