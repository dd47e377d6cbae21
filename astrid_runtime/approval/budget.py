"""Budgets: what an action declares it costs, reserved when asked, kept in KV.

    # policy.toml
    [[budget]]
    name = "spend"          # shown by `astrid status`, named in denials
    unit = "usd"            # counts the action detail `cost.usd` ("0.25")
    limit = 5.0
    per = "session"         # session: one pool for the kernel's session; plugin: one per plugin
    plugin = "*"            # glob over plugin names it counts (default "*")
    kind = "*"              # glob over action kinds it counts (default "*")

An action declares a cost with a detail `cost.<unit>` = a decimal number.
A budget whose unit the action does not declare, or whose globs do not
match, lets it pass untouched. Otherwise the cost is **reserved** when
the action is asked (stage 4, before a person answers): if spent +
reserved + cost would pass the limit, it is denied now. A reservation is
**refunded** when the action is then denied (a person's deny, a timeout,
the kernel stopping) and **charged** (moved to spent) when it is allowed.

Atomic and persistent: each pool is one KV value (`{"spent": S}` under
the kernel's own keyspace `kernel:budget`, key `NAME/session/SESSION` or
`NAME/plugin/PLUGIN`), changed under one lock and written whole. Only
spending is kept: a reservation lives as long as its ask, and no ask
outlives the kernel. Without a KV store (`--kv none`) budgets last for
the run. Thread-safe.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from astrid_runtime.errors import Refusal
from astrid_runtime.tomlfile import TomlDoc

if TYPE_CHECKING:  # the pipeline imports the policy, which parses budgets
    from astrid_runtime.abi.context import KvBackend
    from astrid_runtime.approval.pipeline import Action

KEYSPACE = "kernel:budget"
SCOPES = ("session", "plugin")


class BudgetExceeded(Refusal):
    """Denied by the budget named `budget`."""

    def __init__(self, budget: str, message: str) -> None:
        super().__init__("denied", message)
        self.budget = budget


@dataclass(frozen=True)
class BudgetRule:
    name: str
    unit: str
    limit: float
    per: str = "session"
    plugin: str = "*"
    kind: str = "*"

    def cost(self, action: Action) -> float | None:
        """The action's declared cost in this unit, if this budget counts it."""
        if not (fnmatchcase(action.plugin, self.plugin) and fnmatchcase(action.kind, self.kind)):
            return None
        raw = dict(action.details).get(f"cost.{self.unit}")
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise Refusal("denied", f"cost.{self.unit} is not a number: {raw!r}") from None
        if not math.isfinite(value) or value < 0:
            raise Refusal("denied", f"cost.{self.unit} must be a finite number >= 0")
        return value


@dataclass
class _Pool:
    spent: float = 0.0
    reserved: float = 0.0


@dataclass
class Reservation:
    """One reservation; refund or charge it exactly once."""

    budget: Budgets
    rule: BudgetRule
    key: str
    amount: float
    done: bool = False

    def refund(self) -> None:
        self.budget._settle(self, charge=False)

    def charge(self) -> None:
        self.budget._settle(self, charge=True)


@dataclass
class Budgets:
    """Every `[[budget]]` of the policy, as one pipeline stage named `budget`."""

    rules: tuple[BudgetRule, ...]
    session: str
    kv: KvBackend | None = None
    name: str = "budget"
    _pools: dict[str, _Pool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _key(self, rule: BudgetRule, action: Action) -> str:
        owner = self.session if rule.per == "session" else action.plugin
        return f"{rule.name}/{rule.per}/{owner}"

    def _pool(self, key: str) -> _Pool:
        """The pool, loaded from KV the first time (lock held)."""
        pool = self._pools.get(key)
        if pool is None:
            pool = _Pool()
            raw = self.kv.get(KEYSPACE, key) if self.kv is not None else None
            if raw is not None:
                pool.spent = float(json.loads(raw).get("spent", 0.0))
            self._pools[key] = pool
        return pool

    def _store(self, key: str, pool: _Pool) -> None:
        if self.kv is not None:
            self.kv.set(KEYSPACE, key, json.dumps({"spent": pool.spent}).encode())

    def reserve(self, action: Action) -> Holds | None:
        """Reserve the action's cost in every budget that counts it, or deny (none taken)."""
        holds: list[Reservation] = []
        with self._lock:
            for rule in self.rules:
                cost = rule.cost(action)
                if cost is None:
                    continue
                key = self._key(rule, action)
                pool = self._pool(key)
                left = rule.limit - pool.spent - pool.reserved
                if cost > left + 1e-9:
                    for hold in holds:  # all or nothing
                        self._pools[hold.key].reserved -= hold.amount
                    raise BudgetExceeded(rule.name, f"{cost:g} {rule.unit} asked, "
                                         f"{max(left, 0):g} of {rule.limit:g} left "
                                         f"({rule.per} budget)")
                pool.reserved += cost
                holds.append(Reservation(self, rule, key, cost))
        if not holds:
            return None
        return Holds(holds)

    def _settle(self, hold: Reservation, *, charge: bool) -> None:
        with self._lock:
            if hold.done:
                return
            hold.done = True
            pool = self._pools[hold.key]
            pool.reserved = max(0.0, pool.reserved - hold.amount)
            if charge:
                pool.spent += hold.amount
                self._store(hold.key, pool)

    def report(self) -> list[dict[str, Any]]:
        """Every pool used so far (and every session pool), for `astrid status`."""
        with self._lock:
            for rule in self.rules:
                if rule.per == "session":
                    self._pool(f"{rule.name}/session/{self.session}")
            by_name = {r.name: r for r in self.rules}
            rows = []
            for key, pool in sorted(self._pools.items()):
                name, per, owner = key.split("/", 2)
                rule = by_name[name]
                rows.append({"budget": name, "per": per, "owner": owner, "unit": rule.unit,
                             "limit": rule.limit, "spent": round(pool.spent, 6),
                             "reserved": round(pool.reserved, 6),
                             "left": round(rule.limit - pool.spent - pool.reserved, 6)})
            return rows


@dataclass
class Holds:
    """Several budgets' reservations for one action, settled together."""

    holds: list[Reservation]

    def refund(self) -> None:
        for hold in self.holds:
            hold.refund()

    def charge(self) -> None:
        for hold in self.holds:
            hold.charge()


def _positive(value: float) -> str | None:
    return None if value >= 0 and math.isfinite(value) else "must be a number >= 0"


def _per(value: str) -> str | None:
    return None if value in SCOPES else f"must be one of {', '.join(SCOPES)}"


def parse_budgets(doc: TomlDoc) -> tuple[BudgetRule, ...]:
    """The `[[budget]]` tables of a policy file; errors name the line."""
    rules = []
    names = set()
    for i, table in enumerate(doc.get(doc.data, "budget", list, [])):
        if not isinstance(table, dict):
            raise doc.fail("budget must be a table ([[budget]])", "budget", None, i)
        doc.unknown_keys(table, {"name", "unit", "limit", "per", "plugin", "kind"}, "budget", i)
        for required in ("name", "unit", "limit"):
            if required not in table:
                raise doc.fail(f"budget {i + 1}: missing required key {required!r}", "budget",
                               None, i)
        where: dict[str, Any] = {"table_name": "budget", "index": i}
        rule = BudgetRule(
            name=doc.get(table, "name", str, None, **where),
            unit=doc.get(table, "unit", str, None, **where),
            limit=float(doc.get(table, "limit", (int, float), None, check=_positive, **where)),
            per=doc.get(table, "per", str, "session", check=_per, **where),
            plugin=doc.get(table, "plugin", str, "*", **where),
            kind=doc.get(table, "kind", str, "*", **where))
        if rule.name in names or "/" in rule.name:
            raise doc.fail(f"budget {i + 1}: name {rule.name!r} is repeated or has a '/'",
                           "budget", None, i)
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


__all__ = ["KEYSPACE", "BudgetExceeded", "BudgetRule", "Budgets", "Holds", "Reservation",
           "parse_budgets"]
