"""One kernel's approvals, wired: pipeline, ask queue, standing grants, the three answer paths.

`Approvals.open(home, policy, ...)` builds the parts; `attach(kernel)`
hands every plugin the pipeline for `cap.request`, lets a waiting ask
release its guest thread's slot, announces asks on the bus, denies the
waiting ones when the kernel stops and adds `approvals` / `budgets` to
`astrid status`. The answer paths all end in `answer()`:

- the control socket (`astrid approve/deny`, control.py), `by` = `cli`;
- `astrid run`'s terminal (run_cli.py), `by` = `terminal`;
- the bus: a plugin granted `publish` on `approval.answer` sends
  `{"id", "answer", "reason"}` (`serve_bus`), `by` = `plugin:NAME`. A
  plugin can never answer its own ask. One that starts late publishes on
  `approval.pending` to have the waiting asks announced again.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from astrid_runtime.abi.context import PluginContext
from astrid_runtime.approval.asks import Ask, AskQueue, parse_answer
from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.budget import Budgets
from astrid_runtime.approval.interceptors import Unavailable, WasmInterceptor, load_interceptors
from astrid_runtime.approval.person import (
    ANSWER,
    KERNEL,
    PENDING,
    REQUESTED,
    PersonApprover,
    audit_listener,
    bus_listener,
    parse_bus_answer,
)
from astrid_runtime.approval.pipeline import ApprovalPipeline, Budget, Stage
from astrid_runtime.approval.policy import Policy
from astrid_runtime.approval.standing import StandingGrant, StandingGrants
from astrid_runtime.approval.token import TokenIssuer, load_or_create_key
from astrid_runtime.bus import Tap
from astrid_runtime.errors import BusError, Refusal
from astrid_runtime.kernel import Kernel


@dataclass
class Approvals:
    """The approval machinery of one kernel (see the module docstring)."""

    pipeline: ApprovalPipeline
    queue: AskQueue
    standing: StandingGrants
    approver: PersonApprover
    budgets: Sequence[Budget] = ()

    @classmethod
    def open(cls, home: Path, policy: Policy, *, key: bytes, audit: AuditLog,
             interceptors: Sequence[Stage] = (), budgets: Sequence[Budget] = ()
             ) -> Approvals:
        queue = AskQueue(policy.ask_timeout_s)
        queue.listeners.append(audit_listener(audit))
        standing = StandingGrants(home, key)
        approver = PersonApprover(queue)
        pipeline = ApprovalPipeline(TokenIssuer(key), audit, policy, interceptors, budgets,
                                    approver, standing)
        return cls(pipeline, queue, standing, approver, budgets)

    @property
    def audit(self) -> AuditLog:
        return self.pipeline.audit

    def attach(self, kernel: Kernel) -> None:
        """Wire into a running kernel (call in the trio thread, before boot)."""
        trio_token = trio.lowlevel.current_trio_token()
        trio_thread = threading.get_ident()
        limiter = kernel.limiter

        def adjust(by: int) -> None:
            limiter.total_tokens = max(1, int(limiter.total_tokens) + by)

        def park(by: int) -> None:
            if threading.get_ident() == trio_thread:
                adjust(by)
                return
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(adjust, by, trio_token=trio_token)

        def lost(topic: str, reason: str) -> None:
            kernel.log.event("warning", "approval.event_lost", topic=topic, reason=reason)

        def hook(ctx: PluginContext) -> None:
            ctx.approvals = self.pipeline

        self.approver.park = park
        self.pipeline.epoch_tick_ms = kernel.engine.epoch_tick_ms
        self.queue.listeners.append(bus_listener(kernel.bus, lost))
        kernel.context_hooks.append(hook)
        kernel.stop_hooks.append(lambda: self.queue.close("the kernel is stopping"))
        kernel.status_sections["approvals"] = self.status
        if self.budgets:
            kernel.status_sections["budgets"] = self.budget_status
        if self.pipeline.interceptors:
            kernel.status_sections["interceptors"] = self.interceptor_status

    # -- answering --------------------------------------------------------------

    def answer(self, ask_id: str, decision: str, reason: str, by: str) -> Ask:
        """Answer a pending ask; `Refusal` (`invalid`, `not-found`) otherwise."""
        return self.queue.answer(ask_id, parse_answer(decision, by, reason))

    def revoke(self, grant_id: str) -> StandingGrant:
        grant = self.standing.revoke(grant_id)
        self.audit.record("cap.revoke", {"grant": grant.id, "scope": grant.scope,
                                         "plugin": grant.plugin, "kind": grant.kind,
                                         "resource": grant.resource})
        return grant

    def listing(self) -> dict[str, Any]:
        return {"pending": [a.to_json() for a in self.queue.pending()],
                "standing": [g.to_json() for g in self.standing.listing()]}

    def status(self) -> dict[str, Any]:
        return {"mode": self.pipeline.policy.mode,
                "pending": len(self.queue.pending()),
                "standing": len(self.standing.listing())}

    def interceptor_status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for stage in self.pipeline.interceptors:
            if isinstance(stage, WasmInterceptor):
                rows.append({"name": stage.name, "checks": stage.checks,
                             "failures": stage.failures, "last_error": stage.last_error})
            elif isinstance(stage, Unavailable):
                rows.append({"name": stage.name, "unavailable": stage.reason})
        return rows

    def budget_status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for budget in self.budgets:
            report = getattr(budget, "report", None)
            if report is not None:
                rows += report()
        return rows

    async def serve_bus(self, kernel: Kernel, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take answers published on `approval.answer` by granted plugins, and replay the
        waiting asks to a frontend that publishes on `approval.pending` (one that started
        after they were announced), until cancelled."""
        tap = Tap(kernel.bus, ANSWER)
        tap.endpoint.subscribe(PENDING)
        task_status.started()
        try:
            while True:
                message = await tap.receive()
                if message.topic == PENDING:
                    self._replay(kernel, message.publisher)
                else:
                    self._bus_answer(kernel, message.publisher, message.payload)
        finally:
            tap.close()

    def _replay(self, kernel: Kernel, publisher: str) -> None:
        """Announce every waiting ask again, marked `"replay": true` (plugins only)."""
        if publisher not in kernel.supervisors:
            return
        for ask in self.queue.pending():
            body = {**ask.to_json(), "replay": True}
            try:
                kernel.bus.publish(None, REQUESTED, json.dumps(body).encode(), origin=KERNEL)
            except BusError as e:
                kernel.log.event("warning", "approval.event_lost", topic=REQUESTED,
                                 reason=e.message)

    def _bus_answer(self, kernel: Kernel, publisher: str, payload: bytes) -> None:
        ask_id = ""
        try:
            # Only plugins reach here with a publish grant on approval.answer; the
            # client and the bridge use their own paths (control socket) or none.
            if publisher not in kernel.supervisors:
                raise Refusal("denied", f"{publisher!r} is not a plugin of this kernel")
            try:
                ask_id, decision, reason = parse_bus_answer(payload)
            except ValueError as e:
                raise Refusal("invalid", str(e)) from None
            asker = next((a.plugin for a in self.queue.pending() if a.id == ask_id), None)
            if asker == publisher:
                raise Refusal("denied", "a plugin cannot answer its own ask")
            self.answer(ask_id, decision, reason, f"plugin:{publisher}")
        except Refusal as e:
            self.audit.record("cap.answer_refused", {"ask": ask_id, "by": f"plugin:{publisher}",
                                                     "reason": e.message})


AUDIT_FILE = "audit.jsonl"


async def start_approvals(kernel: Kernel, home: Path, policy: Policy, *,
                          lockfile: Path | None = None, audit: AuditLog | None = None,
                          session: str = "astridd") -> Approvals:
    """Approvals for a kernel that is about to boot: kernel key and audit trail
    under `home`, the policy's interceptors (pinned in `lockfile`, compiled; the
    plugin boot leaves interceptor components alone) and budgets (in the
    kernel's KV, pools per `session`), wired in, answers on the bus served.
    What astridd and `astrid run` both do."""
    key = await trio.to_thread.run_sync(load_or_create_key, home)
    budgets: tuple[Budget, ...] = ()
    if policy.budgets:
        budgets = (Budgets(policy.budgets, session, kernel.kv),)
    interceptors: list[Stage] = []
    if policy.interceptors:
        interceptors += await trio.to_thread.run_sync(
            load_interceptors, policy.interceptors,
            lockfile or Path("plugins.lock"), kernel.engine)
        for stage in interceptors:
            if isinstance(stage, Unavailable):
                kernel.log.event("error", "interceptor.unavailable", interceptor=stage.name,
                                 reason=stage.reason)
    approvals = Approvals.open(home, policy, key=key,
                               audit=audit or AuditLog(home / AUDIT_FILE),
                               interceptors=interceptors, budgets=budgets)
    approvals.attach(kernel)
    await kernel.start_service(approvals.serve_bus, kernel)
    return approvals


__all__ = ["AUDIT_FILE", "Approvals", "start_approvals"]
