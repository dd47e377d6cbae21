"""A person answers "ask": the approver that queues an ask and waits for the answer.

The asking plugin's guest thread is the one that waits -- `cap.request`
returns only when a person has answered or the ask's deadline passed.
That blocks that plugin (its mail queues, bounded, as during any long
call) and nothing else:

- while it waits, the thread does not count against the kernel's
  guest-thread limit (`park(+1)` raises the limiter's capacity by one
  for the wait, `park(-1)` lowers it again), so two waiting asks cannot
  starve the other plugins of threads;
- the guest's epoch deadline is re-armed after the answer (abi/cap.py),
  so time spent waiting for a person is not charged to the plugin's
  call timeout;
- the kernel denies every waiting ask when it stops (`AskQueue.close`),
  so shutdown never waits on a person.

Every ask and answer is an audit line (`cap.ask`, `cap.answer`) and a bus
event (`approval.requested`, `approval.answered`, published by `kernel`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from astrid_runtime.approval.asks import Answer, Ask, AskQueue
from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.pipeline import Action
from astrid_runtime.bus import Bus
from astrid_runtime.errors import BusError

REQUESTED = "approval.requested"
ANSWERED = "approval.answered"
#: Frontend plugins answer by publishing `{"id", "answer", "reason"}` here
#: (which needs a publish grant on it, pinned in plugins.lock).
ANSWER = "approval.answer"
#: A frontend that starts late publishes here (any payload) to have every waiting
#: ask announced again on `approval.requested`, marked `"replay": true`.
PENDING = "approval.pending"
KERNEL = "kernel"


@dataclass
class PersonApprover:
    """`Approver` for the pipeline: queue the ask, wait for its answer."""

    queue: AskQueue
    #: Called with +1 before the wait and -1 after it (see the module docstring).
    park: Callable[[int], None] | None = None
    timeout_s: float | None = None

    def ask(self, action: Action, reason: str, rule: str) -> tuple[str, Answer]:
        ask = self.queue.open(action.plugin, action.kind, action.resource, action.details,
                              reason=reason, rule=rule, timeout_s=self.timeout_s)
        if self.park is not None:
            self.park(1)
        try:
            answer = self.queue.wait(ask.id)
        finally:
            if self.park is not None:
                self.park(-1)
        return ask.id, answer


def audit_listener(audit: AuditLog) -> Callable[[Ask, Answer | None], None]:
    """`cap.ask` when an ask opens (the decision is deferred), `cap.answer` when answered."""
    def listen(ask: Ask, answer: Answer | None) -> None:
        if answer is None:
            audit.record("cap.ask", {"ask": ask.id, "plugin": ask.plugin, "kind": ask.kind,
                                     "resource": ask.resource, "decision": "deferred",
                                     "stage": "approval", "rule": ask.rule,
                                     "reason": ask.reason, "deadline_ms": ask.deadline_ms})
        else:
            audit.record("cap.answer", {"ask": ask.id, "plugin": ask.plugin, "kind": ask.kind,
                                        "resource": ask.resource, "answer": answer.decision,
                                        "by": answer.by, "reason": answer.reason})
    return listen


def bus_listener(bus: Bus, on_lost: Callable[[str, str], None]
                 ) -> Callable[[Ask, Answer | None], None]:
    """Publish `approval.requested` / `approval.answered` as the kernel.

    A subscriber's full mailbox refuses the event (the bus is all or
    nothing); `on_lost(topic, reason)` is told, and the ask stays listed
    by `astrid approvals` regardless.
    """
    def listen(ask: Ask, answer: Answer | None) -> None:
        if answer is None:
            topic, body = REQUESTED, ask.to_json()
        else:
            topic, body = ANSWERED, {"id": ask.id, "plugin": ask.plugin, "kind": ask.kind,
                                     "resource": ask.resource, "answer": answer.decision,
                                     "by": answer.by, "reason": answer.reason}
        try:
            bus.publish(None, topic, json.dumps(body).encode(), origin=KERNEL)
        except BusError as e:
            on_lost(topic, e.message)
    return listen


def parse_bus_answer(payload: bytes) -> tuple[str, str, str]:
    """(id, answer, reason) from an `approval.answer` payload; ValueError if malformed."""
    body = json.loads(payload)
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise ValueError('approval.answer wants JSON {"id", "answer", "reason"}')
    answer = body.get("answer", "")
    reason = body.get("reason", "")
    if not isinstance(answer, str) or not isinstance(reason, str):
        raise ValueError("answer and reason must be strings")
    return body["id"], answer, reason


__all__ = ["ANSWER", "ANSWERED", "KERNEL", "PENDING", "REQUESTED", "PersonApprover",
           "audit_listener", "bus_listener", "parse_bus_answer"]
