"""The approval pipeline: grant -> interceptors -> policy -> budget -> person -> token -> audit.

A plugin's `cap.request(action)` runs these stages in order:

1. grant: the action kind must be in the plugin's `cap` grant (plugins.lock).
2. interceptors (`Stage`s, none shipped): may deny, e.g. a URL filter.
3. policy (`policy.Policy`): allow / deny / ask by plugin, kind, resource.
4. budget (`Stage`, none shipped): may deny an allowed or asked action.
5. person (`Approver`, none shipped): answers "ask". With no approver
   wired in, "ask" is denied with a reason saying so.
6. token: an allowed action gets a token scoped to (plugin, kind,
   resource) with the rule's lifetime.
7. audit: every outcome, allowed or denied and by which stage, is one
   `cap.decision` line; every privileged check is one `cap.check` line.

A privileged host path calls `check_token` before acting. Pure apart
from the audit sink; thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.policy import DEFAULT_POLICY, Policy
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
    """An interceptor or budget: a denial reason, or None to let the action pass."""

    name: str

    def deny(self, action: Action) -> str | None: ...


class Approver(Protocol):
    """A person (or their proxy) answering an "ask": True approves."""

    def approve(self, action: Action, reason: str) -> bool: ...


@dataclass
class ApprovalPipeline:
    """Decides `cap.request`s and checks tokens on privileged calls."""

    tokens: TokenIssuer
    audit: AuditLog
    policy: Policy = DEFAULT_POLICY
    interceptors: Sequence[Stage] = field(default_factory=tuple)
    budgets: Sequence[Stage] = field(default_factory=tuple)
    approver: Approver | None = None

    def _deny(self, action: Action, stage: str, reason: str, rule: str = "") -> Refusal:
        self.audit.record("cap.decision", {
            "plugin": action.plugin, "kind": action.kind, "resource": action.resource,
            "decision": "deny", "stage": stage, "rule": rule, "reason": reason})
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

    def request(self, action: Action, granted_kinds: Sequence[str]) -> Token:
        """Run the stages; a token for an approved action, else `Refusal('denied')`."""
        self._validate(action)
        if action.kind not in granted_kinds:
            raise self._deny(action, "grant", f"action kind {action.kind!r} is not in the "
                             "plugin's cap grant")
        for stage in self.interceptors:
            reason = stage.deny(action)
            if reason:
                raise self._deny(action, f"interceptor:{stage.name}", reason)
        verdict = self.policy.decide(action.plugin, action.kind, action.resource)
        rule = verdict.rule.label
        if verdict.decision == "deny":
            raise self._deny(action, "policy", verdict.reason or "the policy denies it", rule)
        for stage in self.budgets:
            reason = stage.deny(action)
            if reason:
                raise self._deny(action, f"budget:{stage.name}", reason, rule)
        if verdict.decision == "ask":
            if self.approver is None:
                raise self._deny(action, "approval", "the policy asks a person and no "
                                 "approver is wired in yet (docs/approval.md)", rule)
            if not self.approver.approve(action, verdict.reason):
                raise self._deny(action, "approval", "a person declined", rule)
        token = self.tokens.issue(action.plugin, action.kind, action.resource, verdict.ttl_s)
        self.audit.record("cap.decision", {
            "plugin": action.plugin, "kind": action.kind, "resource": action.resource,
            "decision": "allow", "stage": "policy" if verdict.decision == "allow"
            else "approval", "rule": rule, "token": token.nonce,
            "expires_at_ms": token.expires_at_ms, "details": dict(action.details)})
        return token

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


__all__ = ["Action", "ApprovalPipeline", "Approver", "Stage"]
