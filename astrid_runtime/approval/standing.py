"""Standing approvals: what a person allowed "for this session" or "always".

A standing grant covers exactly one (plugin, kind, resource) -- the scope
of the ask it answered, never wider. `session` grants live in memory for
the kernel's lifetime; `always` grants are kept in
`$ASTRID_HOME/approvals.json` (mode 0600, written atomically), each entry
MAC'd with the kernel key, so an entry edited by hand or by anything but
the kernel is ignored (and logged), not honoured. The file is re-read when
it changes, so `astrid approvals revoke ID` works with or without a
running kernel. Thread-safe.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import blake3

from astrid_runtime.atomic import write_atomic
from astrid_runtime.errors import Refusal

FILE = "approvals.json"
_log = logging.getLogger("astrid.kernel")


@dataclass(frozen=True)
class StandingGrant:
    id: str
    scope: str  # "session" | "always"
    plugin: str
    kind: str
    resource: str
    by: str
    created_ms: int

    def covers(self, plugin: str, kind: str, resource: str) -> bool:
        return (self.plugin, self.kind, self.resource) == (plugin, kind, resource)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _mac(key: bytes, grant: StandingGrant) -> str:
    body = json.dumps(grant.to_json(), sort_keys=True, separators=(",", ":")).encode()
    return blake3.blake3(body, key=key).hexdigest()


@dataclass
class StandingGrants:
    """Session grants in memory, `always` grants in `home/approvals.json`."""

    home: Path | None
    key: bytes
    _session: list[StandingGrant] = field(default_factory=list)
    _always: list[StandingGrant] = field(default_factory=list)
    _stamp: tuple[int, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def path(self) -> Path | None:
        return None if self.home is None else self.home / FILE

    # -- the file -------------------------------------------------------------

    def _reload(self) -> None:
        """Re-read the file if it changed (lock held)."""
        path = self.path
        if path is None:
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            self._always, self._stamp = [], None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._always = self._read(path)
        self._stamp = stamp

    def _read(self, path: Path) -> list[StandingGrant]:
        try:
            entries = json.loads(path.read_text()).get("grants", [])
        except (OSError, ValueError, AttributeError) as e:
            _log.error("approval.standing_unreadable", extra={"astrid_fields": {
                "path": str(path), "error": str(e)}})
            return []
        grants = []
        for entry in entries:
            try:
                mac = entry.pop("mac")
                grant = StandingGrant(**entry)
            except (TypeError, KeyError, AttributeError):
                continue
            if hmac.compare_digest(mac, _mac(self.key, grant)) and grant.scope == "always":
                grants.append(grant)
            else:
                _log.error("approval.standing_forged", extra={"astrid_fields": {
                    "path": str(path), "id": grant.id}})
        return grants

    def _write(self, grants: list[StandingGrant]) -> None:
        path = self.path
        assert path is not None
        body = {"grants": [{**g.to_json(), "mac": _mac(self.key, g)} for g in grants]}
        write_atomic(path, (json.dumps(body, indent=2) + "\n").encode())  # mkstemp: 0600
        self._stamp = None  # re-read (and so re-stat) on the next use

    def _edit(self, change: Any) -> None:
        """Read-modify-write the file under an flock (lock held)."""
        path = self.path
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{FILE}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._read(path) if path.exists() else []
            self._write(change(current))
        self._reload()

    # -- use ------------------------------------------------------------------

    def find(self, plugin: str, kind: str, resource: str) -> StandingGrant | None:
        """The standing grant covering this scope, if a person gave one."""
        with self._lock:
            self._reload()
            for grant in (*self._session, *self._always):
                if grant.covers(plugin, kind, resource):
                    return grant
        return None

    def add(self, scope: str, plugin: str, kind: str, resource: str, by: str) -> StandingGrant:
        """Remember a person's `session` or `always` answer."""
        grant = StandingGrant(secrets.token_hex(4), scope, plugin, kind, resource, by,
                              int(time.time() * 1000))
        with self._lock:
            if scope == "session" or self.path is None:
                self._session.append(grant)
            else:
                self._edit(lambda current: [*current, grant])
        return grant

    def listing(self) -> list[StandingGrant]:
        with self._lock:
            self._reload()
            return [*self._session, *self._always]

    def revoke(self, grant_id: str) -> StandingGrant:
        """Forget a standing grant; `Refusal('not-found')` if there is none by that id."""
        with self._lock:
            for grant in self._session:
                if grant.id == grant_id:
                    self._session.remove(grant)
                    return grant
            self._reload()
            found = next((g for g in self._always if g.id == grant_id), None)
            if found is None:
                raise Refusal("not-found", f"no standing approval {grant_id!r}")
            self._edit(lambda current: [g for g in current if g.id != grant_id])
            return found


def revoke_offline(home: Path, key: bytes, grant_id: str) -> StandingGrant:
    """`astrid approvals revoke` with no kernel running: edit the file directly."""
    return StandingGrants(home, key).revoke(grant_id)


def list_offline(home: Path, key: bytes) -> list[StandingGrant]:
    return StandingGrants(home, key).listing()


__all__ = ["FILE", "StandingGrant", "StandingGrants", "list_offline", "revoke_offline"]
