"""Driver lookup: the `astrid_fs.drivers` entry-point group, by URL scheme.

A driver package registers a `DriverSpec` object:

    [project.entry-points."astrid_fs.drivers"]
    mydrv = "my_package.driver:SPEC"

The registry loads every spec once per `Registry` (no global state), maps
each scheme to it, and refuses two specs claiming one scheme. A source with
no `scheme://` (a plain path) is the empty scheme, which `local` claims.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from astrid_fs.drivers.base import DriverSpec, LowerDriver, Options
from astrid_fs.drivers.errors import ConfigError

GROUP = "astrid_fs.drivers"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def scheme_of(source: str) -> str:
    """'s3' for s3://b/p, 'file' for file:///x, '' for a plain path."""
    m = _SCHEME.match(source)
    return m.group(1).lower() if m else ""


@dataclass(frozen=True)
class Registered:
    """One spec and where it came from (`module:attr` of its entry point)."""

    spec: DriverSpec
    origin: str


class Registry:
    """The drivers installed in this Python environment (or given explicitly)."""

    def __init__(self, specs: Iterable[Registered] | None = None) -> None:
        self.drivers: dict[str, Registered] = {}
        self.errors: list[str] = []
        self._by_scheme: dict[str, Registered] = {}
        for reg in (specs if specs is not None else self._load()):
            self._add(reg)

    def _load(self) -> list[Registered]:
        # Imported here: importlib.metadata is slow to import, and most CLI
        # verbs never need a driver.
        from importlib.metadata import entry_points

        found = []
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            try:
                spec = ep.load()
            except Exception as e:  # a broken third-party driver must not break the CLI
                self.errors.append(f"driver {ep.name} ({ep.value}): cannot load: {e}")
                continue
            if not isinstance(spec, DriverSpec):
                self.errors.append(f"driver {ep.name} ({ep.value}): not a DriverSpec")
                continue
            found.append(Registered(spec, ep.value))
        return found

    def _add(self, reg: Registered) -> None:
        if reg.spec.name in self.drivers:
            self.errors.append(f"driver {reg.spec.name} registered twice; kept "
                               f"{self.drivers[reg.spec.name].origin}")
            return
        for scheme in reg.spec.schemes:
            if scheme in self._by_scheme:
                self.errors.append(f"scheme {scheme or '(plain path)'!r} claimed by "
                                   f"{self._by_scheme[scheme].spec.name} and {reg.spec.name}")
                continue
            self._by_scheme[scheme] = reg
        self.drivers[reg.spec.name] = reg

    def for_source(self, source: str) -> DriverSpec:
        """The spec serving `source`, or ConfigError naming its scheme."""
        scheme = scheme_of(source)
        reg = self._by_scheme.get(scheme)
        if reg is None:
            known = ", ".join(sorted(s + "://" for s in self._by_scheme if s)) or "none"
            raise ConfigError(f"no driver for {scheme or 'plain'} sources ({source!r}); "
                              f"installed schemes: {known}")
        return reg.spec

    def validate(self, source: str, options: Options) -> DriverSpec:
        spec = self.for_source(source)
        spec.validate(source, options)
        return spec

    def open(self, source: str, options: Options) -> LowerDriver:
        """Build (not check) the driver for `source`."""
        return self.validate(source, options).open(source, options)
