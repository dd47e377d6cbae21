"""The approval policy: TOML rules by plugin, action kind and resource glob.

    # policy.toml
    mode = "guided"              # safe | guided | autonomous (see MODES)
    default = "ask"              # allow | deny | ask, when no rule matches
    token_ttl_s = 300            # lifetime of a token an allow rule grants
    ask_timeout_s = 300          # how long an "ask" waits for a person

    [[rule]]
    plugin = "filetool"          # glob over plugin names; default "*"
    kind = "fs.commit"           # glob over action kinds
    resource = "workspace/*"     # glob over the resource; default "*"
    decision = "allow"           # allow | deny | ask
    reason = "the demo commits"  # optional: shown in denials and audit lines
    ttl_s = 60                   # optional: overrides token_ttl_s

Rules are tried in file order and the first match decides, so put narrow
rules before broad ones. Globs are `fnmatch` patterns matched case-
sensitively, where `*` also matches `/`. Pure: no I/O except `load_policy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from astrid_runtime.approval.budget import BudgetRule, parse_budgets
from astrid_runtime.errors import ConfigError
from astrid_runtime.tomlfile import TomlDoc

DECISIONS = ("allow", "deny", "ask")
DEFAULT_TTL_S = 300.0
DEFAULT_ASK_TIMEOUT_S = 300.0
#: What each mode does to a decision (a policy's or the default's). Denials,
#: interceptors and budgets apply in every mode; only allow/ask move.
#:   safe        nothing privileged happens without a person: allow -> ask
#:   guided      the policy as written (the default)
#:   autonomous  the agent acts on its own unless a rule denies: ask -> allow
MODES = {
    "safe": {"allow": "ask", "ask": "ask", "deny": "deny"},
    "guided": {"allow": "allow", "ask": "ask", "deny": "deny"},
    "autonomous": {"allow": "allow", "ask": "allow", "deny": "deny"},
}


class PolicyError(ConfigError):
    """A policy file that cannot be used (names the file and line)."""


@dataclass(frozen=True)
class Rule:
    kind: str
    decision: str
    plugin: str = "*"
    resource: str = "*"
    reason: str = ""
    ttl_s: float | None = None
    #: 1-based position in the file (for audit lines); 0 for the default.
    number: int = 0

    def matches(self, plugin: str, kind: str, resource: str) -> bool:
        return (fnmatchcase(plugin, self.plugin) and fnmatchcase(kind, self.kind)
                and fnmatchcase(resource, self.resource))

    @property
    def label(self) -> str:
        return f"rule {self.number}" if self.number else "default"


@dataclass(frozen=True)
class Verdict:
    """What the policy says about one action, and which rule said it."""

    decision: str
    rule: Rule
    ttl_s: float

    @property
    def reason(self) -> str:
        return self.rule.reason


@dataclass(frozen=True)
class InterceptorRule:
    """One `[[interceptor]]`: a pinned interceptor component to run, in file order."""

    name: str
    #: Handed to its `init`; None: the `config` pinned for it in plugins.lock.
    config: str | None = None


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    default: str = "ask"
    token_ttl_s: float = DEFAULT_TTL_S
    source: str = "built-in"
    mode: str = "guided"
    ask_timeout_s: float = DEFAULT_ASK_TIMEOUT_S
    budgets: tuple[BudgetRule, ...] = ()
    interceptors: tuple[InterceptorRule, ...] = ()

    def decide(self, plugin: str, kind: str, resource: str) -> Verdict:
        """The first matching rule's decision, or the default, as the mode turns it."""
        moved = MODES[self.mode]
        for rule in self.rules:
            if rule.matches(plugin, kind, resource):
                return Verdict(moved[rule.decision], rule,
                               rule.ttl_s if rule.ttl_s is not None else self.token_ttl_s)
        fallback = Rule("*", self.default, reason=f"no rule in {self.source} matches")
        return Verdict(moved[self.default], fallback, self.token_ttl_s)


#: With no policy file every request is "ask" -- and with no person wired in, denied.
DEFAULT_POLICY = Policy()


def _decision(value: str) -> str | None:
    return None if value in DECISIONS else f"must be one of {', '.join(DECISIONS)}"


def _mode(value: str) -> str | None:
    return None if value in MODES else f"must be one of {', '.join(MODES)}"


def _ttl(value: float) -> str | None:
    return None if 0 < value <= 24 * 3600 else "must be between 0 and 86400 seconds"


def parse_policy(doc: TomlDoc) -> Policy:
    top = doc.data
    doc.unknown_keys(top, {"default", "token_ttl_s", "rule", "mode", "ask_timeout_s",
                           "budget", "interceptor"})
    default = doc.get(top, "default", str, "ask", check=_decision)
    ttl = float(doc.get(top, "token_ttl_s", (int, float), DEFAULT_TTL_S, check=_ttl))
    mode = doc.get(top, "mode", str, "guided", check=_mode)
    ask_timeout = float(doc.get(top, "ask_timeout_s", (int, float), DEFAULT_ASK_TIMEOUT_S,
                                check=_ttl))
    raw_rules = doc.get(top, "rule", list, [])
    rules = []
    for i, table in enumerate(raw_rules):
        if not isinstance(table, dict):
            raise doc.fail("rule must be a table ([[rule]])", "rule", None, i)
        doc.unknown_keys(table, {"plugin", "kind", "resource", "decision", "reason", "ttl_s"},
                         "rule", i)
        for required in ("kind", "decision"):
            if required not in table:
                raise doc.fail(f"rule {i + 1}: missing required key {required!r}", "rule",
                               None, i)
        rule_ttl = doc.get(table, "ttl_s", (int, float), None, table_name="rule", index=i,
                           check=_ttl)
        rules.append(Rule(
            kind=doc.get(table, "kind", str, None, table_name="rule", index=i),
            decision=doc.get(table, "decision", str, None, table_name="rule", index=i,
                             check=_decision),
            plugin=doc.get(table, "plugin", str, "*", table_name="rule", index=i),
            resource=doc.get(table, "resource", str, "*", table_name="rule", index=i),
            reason=doc.get(table, "reason", str, "", table_name="rule", index=i),
            ttl_s=None if rule_ttl is None else float(rule_ttl),
            number=i + 1))
    return Policy(tuple(rules), default, ttl, str(doc.path), mode, ask_timeout,
                  parse_budgets(doc), parse_interceptors(doc))


def parse_interceptors(doc: TomlDoc) -> tuple[InterceptorRule, ...]:
    """The `[[interceptor]]` tables, in order; errors name the line."""
    rules = []
    for i, table in enumerate(doc.get(doc.data, "interceptor", list, [])):
        if not isinstance(table, dict):
            raise doc.fail("interceptor must be a table ([[interceptor]])", "interceptor",
                           None, i)
        doc.unknown_keys(table, {"name", "config"}, "interceptor", i)
        if "name" not in table:
            raise doc.fail(f"interceptor {i + 1}: missing required key 'name'", "interceptor",
                           None, i)
        rules.append(InterceptorRule(
            doc.get(table, "name", str, None, table_name="interceptor", index=i),
            doc.get(table, "config", str, None, table_name="interceptor", index=i)))
    return tuple(rules)


def load_policy(path: Path) -> Policy:
    """Parse a policy file; errors name the file and line."""
    return parse_policy(TomlDoc.load(path, PolicyError))


POLICY_FILE = "policy.toml"


def home_policy(home: Path) -> Policy:
    """`home/policy.toml` if it exists, else the built-in (everything asks)."""
    path = home / POLICY_FILE
    return load_policy(path) if path.exists() else DEFAULT_POLICY


__all__ = [
    "DECISIONS",
    "DEFAULT_POLICY",
    "MODES",
    "POLICY_FILE",
    "InterceptorRule",
    "Policy",
    "PolicyError",
    "Rule",
    "Verdict",
    "home_policy",
    "load_policy",
    "parse_policy",
]
