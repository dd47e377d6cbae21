"""The kernel's privileged commit path: `kernel.fs.commit` with an approval token.

A plugin that wants the session committed asks `cap.request` for an
`fs.commit` action on `workspace` (everything) or `workspace/P1,P2` (those
paths, sorted, comma-joined), then publishes `{"token", "paths"}` on
`kernel.fs.commit`. This service computes the resource from the paths it
was given (never trusting one the plugin names), checks the token against
(publisher, `fs.commit`, resource) with `ApprovalPipeline.check_token`
(single use; audited either way), and only then runs
`astrid-fs commit -- SESSION PATHS`. The outcome goes to `agent.response`
from the kernel (`{"text", "plugin": "kernel", "ok"}`).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from dataclasses import dataclass
from typing import Any

import trio

from astrid_fs.pyexec import python_module
from astrid_runtime.approval.pipeline import ApprovalPipeline
from astrid_runtime.bus import Bus, Message, Tap
from astrid_runtime.errors import BusError, Refusal
from astrid_runtime.vfs import check_path

TOPIC = "kernel.fs.commit"
KIND = "fs.commit"
RESPONSE_TOPIC = "agent.response"
MAX_PATHS = 256


def commit_resource(paths: list[str]) -> str:
    """The `cap` resource naming a commit of `paths` (all of the session when empty)."""
    return "workspace" if not paths else "workspace/" + ",".join(sorted(paths))


@dataclass(frozen=True)
class CommitRequest:
    token: str
    #: As the plugin named them (the token's resource is made of these) ...
    paths: list[str]
    #: ... and normalised for astrid-fs.
    clean: list[str]
    reply: dict[str, Any]


def parse_request(payload: bytes) -> CommitRequest:
    """The request in a `kernel.fs.commit` payload, or `Refusal('invalid')`."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Refusal("invalid", "kernel.fs.commit wants JSON {\"token\", \"paths\"}") from None
    if not isinstance(body, dict) or not isinstance(body.get("token"), str):
        raise Refusal("invalid", "kernel.fs.commit wants JSON {\"token\", \"paths\"}")
    paths = body.get("paths", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise Refusal("invalid", "paths must be a list of strings")
    if len(paths) > MAX_PATHS:
        raise Refusal("too-large", f"more than {MAX_PATHS} paths")
    clean = []
    for path in paths:
        parts = check_path(path, allow_empty=False)
        clean.append("/".join(parts))
    reply = {"in_reply_to": body["in_reply_to"]} if "in_reply_to" in body else {}
    return CommitRequest(body["token"], paths, clean, reply)


class CommitService:
    """Serves `kernel.fs.commit` for one mounted session."""

    def __init__(self, bus: Bus, pipeline: ApprovalPipeline, session: str, *,
                 astrid_fs: tuple[str, ...] = tuple(python_module("astrid_fs.cli")),
                 env: dict[str, str] | None = None):
        self.bus = bus
        self.pipeline = pipeline
        self.session = session
        self.astrid_fs = astrid_fs
        self.env = env

    def _reply(self, text: str, ok: bool, reply: dict[str, Any]) -> None:
        body = {"text": text, "plugin": "kernel", "ok": ok, **reply}
        # A full mailbox drops the answer; the audit line still records the outcome.
        with contextlib.suppress(BusError):
            self.bus.publish(None, RESPONSE_TOPIC, json.dumps(body).encode(), origin="kernel")

    def _commit(self, paths: list[str]) -> tuple[bool, str]:
        # `commit -- SESSION PATHS`: nothing a plugin names can read as an option.
        argv = [*self.astrid_fs, "commit", "--", self.session, *paths]
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env,
                              check=False, timeout=600)
        text = (done.stdout.strip() or done.stderr.strip() or "committed").splitlines()
        return done.returncode == 0, "\n".join(text[-20:])

    async def handle(self, message: Message) -> None:
        """Check and carry out one commit request; always answers."""
        reply: dict[str, Any] = {}
        try:
            request = parse_request(message.payload)
            reply = request.reply
            self.pipeline.check_token(request.token, plugin=message.publisher, kind=KIND,
                                      resource=commit_resource(request.paths))
        except Refusal as e:
            self.pipeline.audit.record("fs.commit", {"plugin": message.publisher, "ok": False,
                                                     "reason": e.message})
            self._reply(f"commit refused ({e.kind}): {e.message}", False, reply)
            return
        ok, output = await trio.to_thread.run_sync(self._commit, request.clean)
        self.pipeline.audit.record("fs.commit", {"plugin": message.publisher, "ok": ok,
                                                 "session": self.session,
                                                 "paths": request.clean})
        self._reply(f"Committed session {self.session}:\n{output}" if ok
                    else f"commit failed: {output}", ok, reply)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Handle requests one at a time until cancelled."""
        tap = Tap(self.bus, TOPIC)
        task_status.started()
        try:
            while True:
                await self.handle(await tap.receive())
        finally:
            tap.close()


__all__ = ["KIND", "TOPIC", "CommitService", "commit_resource", "parse_request"]
