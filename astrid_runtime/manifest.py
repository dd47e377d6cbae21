"""`plugin.toml`: what a plugin is, what it asks for, and its limits.

    name = "notes"                 # [a-z0-9-], unique per kernel
    version = "0.1.0"
    component = "build/notes.wasm" # relative to this file
    config = ""                    # string handed to the plugin's init(); pinned
                                   # in plugins.lock at install, like the limits
    exports = []                   # WIT interfaces it provides to other plugins
    imports = []                   # ... and calls: ["astrid:markdown/render@0.1.0"]
                                   # (links.py; an import is also an ask: grants.link)

    [capabilities]                 # what it asks for; the operator grants it at install
    publish = ["notes.>"]
    subscribe = ["notes.>", "user.input"]
    kv = true
    vfs = ["workspace"]
    cap = ["net.http"]

    [limits]                       # all optional; see grants.Limits for defaults;
                                   # pinned in plugins.lock at install, like the grants
    memory_mb = 128
    call_timeout_ms = 2000
    fuel_per_call = 1000000000
    mailbox = 256
    max_payload_kb = 1024
    publish_per_sec = 1000

Errors name the file and line: `plugins/notes/plugin.toml:7: ...`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from astrid_runtime.bus.topics import validate_pattern
from astrid_runtime.errors import KernelError, ManifestError
from astrid_runtime.grants import DEFAULT_LIMITS, FLOAT_LIMIT_KEYS, LIMIT_KEYS, Grants, Limits
from astrid_runtime.links import InterfaceRef, LinkError, parse_interface
from astrid_runtime.tomlfile import TomlDoc

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
MANIFEST_NAME = "plugin.toml"

@dataclass(frozen=True)
class Manifest:
    path: Path
    name: str
    version: str
    component: Path
    config: str
    asks: Grants
    limits: Limits
    #: WIT interfaces provided to / called from other plugins (links.py).
    exports: tuple[InterfaceRef, ...] = ()
    imports: tuple[InterfaceRef, ...] = ()


def manifest_path(path: Path) -> Path:
    """`path` itself if it is a file, else `path/plugin.toml`."""
    return path / MANIFEST_NAME if path.is_dir() else path


def load_manifest(path: Path) -> Manifest:
    """Parse and check a plugin manifest (a `plugin.toml` or a directory holding one)."""
    return parse_manifest(TomlDoc.load(manifest_path(path), ManifestError))


def _positive(value: Any) -> str | None:
    return None if value >= 0 else "must not be negative"


def parse_manifest(doc: TomlDoc) -> Manifest:
    top = doc.data
    doc.unknown_keys(top, {"name", "version", "component", "config", "capabilities", "limits",
                           "exports", "imports"})
    for required in ("name", "version", "component"):
        if required not in top:
            raise doc.fail(f"missing required key {required!r}")
    name = doc.get(top, "name", str, None,
                   check=lambda v: None if NAME_RE.match(v) else
                   "must be lowercase letters, digits and '-', starting with a letter")
    version = doc.get(top, "version", str, None,
                      check=lambda v: None if v.strip() else "must not be empty")
    component_rel = doc.get(top, "component", str, None,
                            check=lambda v: None if v.strip() else "must not be empty")
    config = doc.get(top, "config", str, "")
    caps = doc.get(top, "capabilities", dict, {})
    doc.unknown_keys(caps, {"publish", "subscribe", "kv", "vfs", "cap"}, "capabilities")
    asks = Grants(
        publish=doc.string_list(caps, "publish", table_name="capabilities"),
        subscribe=doc.string_list(caps, "subscribe", table_name="capabilities"),
        kv=doc.get(caps, "kv", bool, False, table_name="capabilities"),
        vfs=doc.string_list(caps, "vfs", table_name="capabilities"),
        cap=doc.string_list(caps, "cap", table_name="capabilities"),
    )
    exports, imports = (_interfaces(doc, key) for key in ("exports", "imports"))
    # Calling an interface is a capability: the imports are asked for, and
    # what the operator approves is pinned as the `link` grant.
    asks = replace(asks, link=tuple(str(ref) for ref in imports))
    for key in ("publish", "subscribe"):
        for pattern in getattr(asks, key):
            try:
                validate_pattern(pattern)
            except KernelError as e:
                raise doc.fail(f"{key}: {e}", "capabilities", key) from None
    limits = parse_limits(doc, doc.get(top, "limits", dict, {}), "limits", DEFAULT_LIMITS)
    component = (doc.path.parent / component_rel).resolve()
    return Manifest(doc.path, name, version, component, config, asks, limits, exports, imports)


def _interfaces(doc: TomlDoc, key: str) -> tuple[InterfaceRef, ...]:
    refs: list[InterfaceRef] = []
    for text in doc.string_list(doc.data, key):
        try:
            refs.append(parse_interface(text))
        except LinkError as e:
            raise doc.fail(f"{key}: {e}", "", key) from None
    return tuple(refs)


def parse_limits(doc: TomlDoc, table: dict[str, Any], table_name: str, base: Limits,
                 index: int = 0) -> Limits:
    """A `[limits]` table applied over `base` (the manifest's, a lock pin's, the ceilings)."""
    doc.unknown_keys(table, set(LIMIT_KEYS) | set(FLOAT_LIMIT_KEYS), table_name, index)
    changes: dict[str, Any] = {}
    for key, (field_name, scale) in LIMIT_KEYS.items():
        value = doc.get(table, key, int, None, table_name=table_name, index=index,
                        check=_positive)
        if value is not None:
            changes[field_name] = value * scale
    for key in FLOAT_LIMIT_KEYS:
        value = doc.get(table, key, (int, float), None, table_name=table_name, index=index,
                        check=_positive)
        if value is not None:
            changes[key] = float(value)
    return base.replace(**changes)
