"""Asks waiting for a person: opened by a plugin's `cap.request`, answered from anywhere.

An `Ask` is one capability request whose policy said "ask". It stays
pending -- listed by `astrid approvals`, announced on the bus as
`approval.requested`, shown in `astrid run`'s terminal -- until a person
answers it or its own deadline passes (then it is denied, "no answer
within N s"). Nothing is dropped silently: an ask ends with exactly one
`Answer`, and `closed` asks (the kernel stopping) are denied too.

The answers, as Claude Code and upstream Astrid users know them:

    once     allow this one request
    session  allow it, and the same (plugin, kind, resource) until the kernel stops
    always   allow it, and remember that (a standing grant, listable and revocable)
    deny     refuse it, with an optional reason returned to the plugin

Thread model: `open` and `wait` run in the asking plugin's guest thread
(the only thread that blocks, and only itself: see `person.py` for how it
stops counting against the guest-thread limit); `answer` runs in the trio
thread (control socket, terminal, bus). One `threading.Condition` guards
the table; listeners are called outside it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from astrid_runtime.errors import Refusal

ANSWERS = ("once", "session", "always", "deny")
#: How long an ask waits for a person unless the policy says otherwise.
DEFAULT_ASK_TIMEOUT_S = 300.0
MAX_REASON = 500


@dataclass(frozen=True)
class Answer:
    """A person's (or the kernel's) answer to one ask."""

    decision: str
    #: Who answered: `terminal`, `cli`, `plugin:NAME`, or `kernel` (timeout, shutdown).
    by: str
    reason: str = ""

    @property
    def allows(self) -> bool:
        return self.decision != "deny"


@dataclass(frozen=True)
class Ask:
    """One request waiting for a person."""

    id: str
    plugin: str
    kind: str
    resource: str
    details: tuple[tuple[str, str], ...]
    #: Why the policy asks (its rule's reason), and which rule.
    reason: str
    rule: str
    created_ms: int
    deadline_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "plugin": self.plugin, "kind": self.kind,
                "resource": self.resource, "details": dict(self.details),
                "reason": self.reason, "rule": self.rule, "created_ms": self.created_ms,
                "deadline_ms": self.deadline_ms}


def parse_answer(decision: str, by: str, reason: str = "") -> Answer:
    """An `Answer`, or `Refusal('invalid')` for an unknown decision."""
    if decision not in ANSWERS:
        raise Refusal("invalid", f"answer must be one of {', '.join(ANSWERS)}, "
                      f"not {decision!r}")
    return Answer(decision, by, reason[:MAX_REASON])


#: Called (outside the lock, in the thread that caused it) when an ask opens
#: (answer None) and when it is answered.
Listener = Callable[[Ask, Answer | None], None]


@dataclass
class _Slot:
    ask: Ask
    answer: Answer | None = None


@dataclass
class AskQueue:
    """The pending asks of one kernel. Thread-safe."""

    timeout_s: float = DEFAULT_ASK_TIMEOUT_S
    listeners: list[Listener] = field(default_factory=list)
    _slots: dict[str, _Slot] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _closed: str | None = None

    def open(self, plugin: str, kind: str, resource: str,
             details: tuple[tuple[str, str], ...] = (), *, reason: str = "", rule: str = "",
             timeout_s: float | None = None) -> Ask:
        """Queue an ask and announce it; `wait` for its answer."""
        now = int(time.time() * 1000)
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        ask = Ask(secrets.token_hex(4), plugin, kind, resource, details, reason, rule, now,
                  now + int(wait_s * 1000))
        with self._cond:
            if self._closed is not None:
                raise Refusal("unavailable", self._closed)
            self._slots[ask.id] = _Slot(ask)
        self._tell(ask, None)
        return ask

    def wait(self, ask_id: str) -> Answer:
        """Block until the ask is answered or its deadline passes (then it is denied)."""
        with self._cond:
            slot = self._slots[ask_id]
            while slot.answer is None:
                left = slot.ask.deadline_ms / 1000 - time.time()
                if left <= 0:
                    slot.answer = Answer("deny", "kernel", "no answer within "
                                         f"{(slot.ask.deadline_ms - slot.ask.created_ms) / 1000:g}"
                                         " s")
                    timed_out = True
                    break
                self._cond.wait(left)
            else:
                timed_out = False
            del self._slots[ask_id]
            answer = slot.answer
        if timed_out:
            self._tell(slot.ask, answer)
        return answer

    def answer(self, ask_id: str, answer: Answer) -> Ask:
        """Answer a pending ask; `Refusal('not-found')` if there is none by that id."""
        with self._cond:
            slot = self._slots.get(ask_id)
            if slot is None or slot.answer is not None:
                raise Refusal("not-found", f"no pending approval {ask_id!r} (answered, "
                              "expired or never asked)")
            slot.answer = answer
            self._cond.notify_all()
        self._tell(slot.ask, answer)
        return slot.ask

    def pending(self) -> list[Ask]:
        """Asks still waiting, oldest first."""
        with self._cond:
            return sorted((s.ask for s in self._slots.values() if s.answer is None),
                          key=lambda a: a.created_ms)

    def close(self, reason: str) -> None:
        """Deny every pending ask (`by` kernel) and refuse new ones: the kernel is stopping."""
        with self._cond:
            self._closed = reason
            answered = []
            for slot in self._slots.values():
                if slot.answer is None:
                    slot.answer = Answer("deny", "kernel", reason)
                    answered.append((slot.ask, slot.answer))
            self._cond.notify_all()
        for ask, answer in answered:
            self._tell(ask, answer)

    def _tell(self, ask: Ask, answer: Answer | None) -> None:
        for listener in list(self.listeners):
            listener(ask, answer)


__all__ = ["ANSWERS", "DEFAULT_ASK_TIMEOUT_S", "Answer", "Ask", "AskQueue", "Listener",
           "parse_answer"]
