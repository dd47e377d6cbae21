"""What a plugin's instance holds open dies with it: HTTP response bodies.

A dropped wasmtime Store does not run the guest's resource destructors, so a
plugin that crashed holding response bodies used to keep their connections
open; after `MAX_OPEN` such crashes it could never make a request again.

Real parts: the `hostile` test component in a real kernel (it traps on
`hostile.trap`), the kernel's HttpService with the approval pipeline, and a
real HTTP server on 127.0.0.1 whose responses stay open until the test ends.
No test component imports `astrid:kernel/http`, so the bodies are opened by
calling the service as the host function would, on the plugin's behalf.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import FAST_RESTART, ExpectedLogs, running, spec
from wasmtime.component import Component

from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.policy import load_policy
from astrid_runtime.approval.service import start_approvals
from astrid_runtime.grants import Grants
from astrid_runtime.kernel import Kernel
from astrid_runtime.net.service import MAX_OPEN, HttpRequest, HttpService
from astrid_runtime.supervisor import State, Supervisor

HOSTILE = Grants(subscribe=("hostile.>",))
NET = ("net.http:127.0.0.1:*",)


class _Stalling(http.server.BaseHTTPRequestHandler):
    """Sends headers and a first chunk, then holds the response open."""

    release: threading.Event

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"5\r\nfirst\r\n")
        self.wfile.flush()
        self.release.wait(timeout=60)  # until the test ends (or a bound)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stalling_server() -> Iterator[str]:
    release = threading.Event()
    handler = type("Handler", (_Stalling,), {"release": release})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/stream"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


async def restarted(sup: Supervisor, crashes: int) -> None:
    await sup.wait_for(lambda s: s.crashes >= crashes and s.state is State.RUNNING)


@pytest.fixture(autouse=True)
def _crashes_expected(expect_logs: ExpectedLogs) -> None:
    expect_logs.allow("plugin.crashed")


async def test_a_crash_closes_the_bodies_its_instance_held(
        kernel: Kernel, components: dict[str, Component], tmp_path: Path,
        stalling_server: str) -> None:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[[rule]]\nkind = "net.http"\ndecision = "allow"\n')
    policy = load_policy(policy_file)
    approvals = await start_approvals(kernel, tmp_path / "home", policy,
                                      audit=AuditLog(None), session="s")
    service = HttpService()
    kernel.context_hooks.append(lambda ctx: setattr(ctx, "http", service))
    bad = await running(kernel, spec(components, "hostile", grants=HOSTILE,
                                     limits=FAST_RESTART))
    request = HttpRequest("GET", stalling_server, (), b"")
    try:
        for crash in range(1, 3):
            heads = [service.send("hostile", NET, approvals.pipeline, request)
                     for _ in range(MAX_OPEN)]
            assert service.read("hostile", heads[0].rep) == b"first"
            kernel.publish("hostile.trap", b"")
            await restarted(bad, crash)
            # the restarted instance holds nothing: every old body is closed ...
            for head in heads:
                with pytest.raises(Exception, match="closed"):
                    service.read("hostile", head.rep)
        # ... so after more than MAX_OPEN leaked bodies' worth of crashes it can
        # still open a body (the old code refused: "more than 8 open response bodies")
        fresh = service.send("hostile", NET, approvals.pipeline, request)
        assert service.read("hostile", fresh.rep) == b"first"
    finally:
        service.close()
