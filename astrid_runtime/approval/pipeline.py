"""The approval pipeline: grant -> interceptors -> policy -> budget -> person -> token -> audit.

A plugin's `cap.request(action)` runs these stages in order:

1. grant: the action kind must be in the plugin's `cap` grant (plugins.lock).
2. interceptors (`Stage`s, e.g. WASM filters): deny, ask, or no objection.
3. policy (`policy.Policy`, turned by its mode): allow / deny / ask.
4. budgets (`Budget`s): reserve the action's declared cost or deny;
   a reservation is refunded when the action is then denied.
5. person: an "ask" is allowed outright by a standing approval (a
   person's earlier "session" or "always" answer), else waits for the
   `Approver` (person.py: an ask in the queue, answered from the
   terminal, the CLI or the bus). With no approver wired in, "ask" is
   denied with a reason saying so.
6. token: an allowed action gets a token scoped to (plugin, kind,
   resource) with the rule's lifetime.
7. audit: every outcome, allowed or denied, which stage and who
   answered, is one `cap.decision` line; the person's queue adds
   `cap.ask` / `cap.answer` lines; every privileged check is one
   `cap.check` line.

A privileged host path calls `check_token` before acting. Blocks only in
`Approver.ask`; thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from astrid_runtime.approval.asks import Answer
from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.policy import DEFAULT_POLICY, Policy
from astrid_runtime.approval.standing import StandingGrants
from astrid_runtime.approval.token import Token, TokenIssuer
from astrid_runtime.errors import Refusal

MAX_FIELD_BYTES = 1024
MAX_DETAILS = 32


@dataclass(frozen=True)
class Action:
    """One capability request, as the kernel saw it (the plugin name is the kernel's)."""

    plugin: str
    kind: str
    resource: str
    details: tuple[tuple[str, str], ...] = ()


class Stage(Protocol):
    """An interceptor: allow (no objection), deny with a reason, or ask a person."""

    name: str

    def check(self, action: Action) -> tuple[str, str]:
        """(decision, reason): decision is `allow`, `deny` or `ask`."""
        ...


class Hold(Protocol):
    """Budget reserved for one request: refunded if it is denied, charged if allowed."""

    def refund(self) -> None: ...

    def charge(self) -> None: ...


class Budget(Protocol):
    """A budget: reserves an action's declared cost, or refuses (`Refusal('denied')`)."""

    name: str

    def reserve(self, action: Action) -> Hold | None:
        """None when the action declares no cost this budget counts."""
        ...


class Approver(Protocol):
    """A person (or their proxy) answering an "ask"; blocks until answered or expired."""

    def ask(self, action: Action, reason: str, rule: str) -> tuple[str, Answer]:
        """(ask id, answer)."""
        ...


@dataclass
class ApprovalPipeline:
    """Decides `cap.request`s and checks tokens on privileged calls."""

    tokens: TokenIssuer
    audit: AuditLog
    policy: Policy = DEFAULT_POLICY
    interceptors: Sequence[Stage] = field(default_factory=tuple)
    budgets: Sequence[Budget] = field(default_factory=tuple)
    approver: Approver | None = None
    #: What a person allowed for the session or always (checked before asking).
    standing: StandingGrants | None = None
    #: The kernel's epoch tick: `cap.request` re-arms a guest's deadline in ticks
    #: after a request that waited (for a person).
    epoch_tick_ms: int = 10

    def _deny(self, action: Action, stage: str, reason: str, rule: str = "",
              **extra: str) -> Refusal:
        self.audit.record("cap.decision", {
            "plugin": action.plugin, "kind": action.kind, "resource": action.resource,
            "decision": "deny", "stage": stage, "rule": rule, "reason": reason, **extra})
        return Refusal("denied", f"{action.kind} on {action.resource!r} denied ({stage}): "
                       f"{reason}")

    @staticmethod
    def _validate(action: Action) -> None:
        if not action.kind or not action.resource:
            raise Refusal("invalid", "an action needs a kind and a resource")
        if len(action.details) > MAX_DETAILS:
            raise Refusal("too-large", f"more than {MAX_DETAILS} action details")
        for text in (action.kind, action.resource, *(k + v for k, v in action.details)):
            if len(text.encode()) > MAX_FIELD_BYTES:
                raise Refusal("too-large", f"action field over {MAX_FIELD_BYTES} bytes")

    def _intercept(self, action: Action) -> tuple[str, str] | None:
        """The first interceptor that asks, after none denied: (stage, reason)."""
        asked = None
        for stage in self.interceptors:
            decision, reason = stage.check(action)
            if decision == "deny":
                raise self._deny(action, f"interceptor:{stage.name}", reason or "denied")
            if decision == "ask" and asked is None:
                asked = (f"interceptor:{stage.name}", reason)
        return asked

    def _reserve(self, action: Action, rule: str) -> list[Hold]:
        holds: list[Hold] = []
        for budget in self.budgets:
            try:
                hold = budget.reserve(action)
            except Refusal as e:
                for done in holds:
                    done.refund()
                name = getattr(e, "budget", budget.name)
                raise self._deny(action, f"budget:{name}", e.message, rule) from None
            if hold is not None:
                holds.append(hold)
        return holds

    def request(self, action: Action, granted_kinds: Sequence[str]) -> Token:
        """Run the stages; a token for an approved action, else `Refusal('denied')`."""
        self._validate(action)
        if action.kind not in granted_kinds:
            raise self._deny(action, "grant", f"action kind {action.kind!r} is not in the "
                             "plugin's cap grant")
        asked_by = self._intercept(action)
        verdict = self.policy.decide(action.plugin, action.kind, action.resource)
        rule = verdict.rule.label
        if verdict.decision == "deny":
            raise self._deny(action, "policy", verdict.reason or "the policy denies it", rule)
        decision, why = verdict.decision, verdict.reason
        if asked_by is not None:  # an interceptor's ask stands in every mode
            decision, why, rule = "ask", asked_by[1], asked_by[0]
        holds = self._reserve(action, rule)
        stage, by = "policy", "policy"
        extra: dict[str, str] = {}
        try:  # whatever ends the request but an allow refunds what was reserved
            if decision == "ask":
                standing = (self.standing.find(action.plugin, action.kind, action.resource)
                            if self.standing is not None else None)
                if standing is not None:
                    stage, by = "approval", f"{standing.scope} approval {standing.id}"
                else:
                    stage, by, extra = self._ask_person(action, why, rule)
            token = self.tokens.issue(action.plugin, action.kind, action.resource,
                                      verdict.ttl_s)
        except BaseException:
            for hold in holds:
                hold.refund()
            raise
        for hold in holds:
            hold.charge()
        self.audit.record("cap.decision", {
            "plugin": action.plugin, "kind": action.kind, "resource": action.resource,
            "decision": "allow", "stage": stage, "rule": rule, "by": by,
            "token": token.nonce, "expires_at_ms": token.expires_at_ms,
            "details": dict(action.details), **extra})
        return token

    def _ask_person(self, action: Action, why: str,
                    rule: str) -> tuple[str, str, dict[str, str]]:
        """Wait for a person; (stage, by, extra audit fields) on allow, else deny."""
        if self.approver is None:
            raise self._deny(action, "approval", "the policy asks a person and no "
                             "approver is wired in (docs/approval.md)", rule)
        try:
            ask_id, answer = self.approver.ask(action, why, rule)
        except Refusal as e:  # no ask could be opened (the kernel is stopping)
            raise self._deny(action, "approval", e.message, rule) from None
        if not answer.allows:
            reason = "a person declined" + (f": {answer.reason}" if answer.reason else "")
            if answer.by == "kernel":
                reason = answer.reason
            raise self._deny(action, "approval", reason, rule, by=answer.by, ask=ask_id)
        if answer.decision in ("session", "always") and self.standing is not None:
            self.standing.add(answer.decision, action.plugin, action.kind, action.resource,
                              answer.by)
        return "approval", answer.by, {"ask": ask_id, "answer": answer.decision}

    def check_token(self, token: str, *, plugin: str, kind: str, resource: str,
                    consume: bool = True) -> Token:
        """What a privileged call runs first: the token's scope, or `Refusal('denied')`.

        Audited either way (`cap.check`). Tokens are single-use by default.
        """
        try:
            scope = self.tokens.check(token, plugin=plugin, kind=kind, resource=resource,
                                      consume=consume)
        except Refusal as e:
            self.audit.record("cap.check", {"plugin": plugin, "kind": kind,
                                            "resource": resource, "ok": False,
                                            "reason": e.message})
            raise
        self.audit.record("cap.check", {"plugin": plugin, "kind": kind, "resource": resource,
                                        "ok": True, "token": scope.nonce})
        return scope


__all__ = ["Action", "ApprovalPipeline", "Approver", "Budget", "Hold", "Stage"]
