"""`plugins.lock`: the pins of installed plugins and what each was granted.

    # plugins.lock: written by `astrid plugin install`; verified at every boot.
    version = 1

    [[plugin]]
    name = "notes"
    version = "0.1.0"
    source = "plugins/notes"                    # plugin dir, relative to this file
    component = "plugins/notes/build/notes.wasm" # relative to this file
    blake3 = "9f2c..."                          # of the component's bytes
    config = ""                                 # handed to its init(), as approved

    [plugin.grants]                             # as the operator approved them
    publish = ["notes.>"]
    subscribe = ["notes.>"]
    kv = true
    vfs = []
    cap = []
    link = ["astrid:markdown/render@0.1.0"]     # only when it imports (links.py)

    [plugin.limits]                             # every limit, pinned at install
    memory_mb = 96
    call_timeout_ms = 2000
    ...

Grants, limits and config are what the kernel uses: the manifest's
`[limits]`, `[capabilities]` and `config` are read only by `astrid plugin
install`, so editing them changes nothing until the plugin is installed
again (and the kernel checks the pins against its own ceilings at every
boot; `grants.GrantPolicy`). A pin written before limits were pinned has
none: the kernel's defaults apply to it; one written before config was
pinned has the empty config (the kernel warns when the manifest's differs).

The kernel reads a component's bytes once, checks their blake3 against the
pin, and compiles exactly those bytes: there is no window in which another
file could be compiled than the one verified. Writes are atomic.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from astrid_runtime.atomic import write_atomic
from astrid_runtime.engine import digest
from astrid_runtime.errors import LockfileError, VerifyError
from astrid_runtime.grants import DEFAULT_LIMITS, Grants, Limits
from astrid_runtime.manifest import NAME_RE, Manifest, parse_limits
from astrid_runtime.tomlfile import TomlDoc

FORMAT_VERSION = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class LockEntry:
    name: str
    version: str
    source: Path
    component: Path
    blake3: str
    grants: Grants
    limits: Limits = DEFAULT_LIMITS
    #: The string handed to the plugin's `init`, as approved at install.
    config: str = ""


@dataclass(frozen=True)
class Lockfile:
    path: Path
    entries: tuple[LockEntry, ...] = ()

    def get(self, name: str) -> LockEntry | None:
        return next((e for e in self.entries if e.name == name), None)

    def with_entry(self, entry: LockEntry) -> Lockfile:
        """A lockfile with `entry` added, or replacing the entry of the same name."""
        rest = tuple(e for e in self.entries if e.name != entry.name)
        return replace(self, entries=tuple(sorted((*rest, entry), key=lambda e: e.name)))

    def without(self, name: str) -> Lockfile:
        return replace(self, entries=tuple(e for e in self.entries if e.name != name))

    def save(self) -> None:
        """Write atomically (temp file + fsync + rename)."""
        write_atomic(self.path, render(self).encode("utf-8"))


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base)


def render(lock: Lockfile) -> str:
    base = lock.path.parent.resolve()
    out = ["# plugins.lock: written by `astrid plugin install`; verified at every boot.",
           f"version = {FORMAT_VERSION}", ""]
    for e in lock.entries:
        g = e.grants
        out += [
            "[[plugin]]",
            f"name = {_q(e.name)}",
            f"version = {_q(e.version)}",
            f"source = {_q(_rel(e.source, base))}",
            f"component = {_q(_rel(e.component, base))}",
            f"blake3 = {_q(e.blake3)}",
            f"config = {_q(e.config)}",
            "",
            "[plugin.grants]",
            f"publish = [{', '.join(map(_q, g.publish))}]",
            f"subscribe = [{', '.join(map(_q, g.subscribe))}]",
            f"kv = {'true' if g.kv else 'false'}",
            f"vfs = [{', '.join(map(_q, g.vfs))}]",
            f"cap = [{', '.join(map(_q, g.cap))}]",
            *([f"link = [{', '.join(map(_q, g.link))}]"] if g.link else []),
            "",
            "[plugin.limits]",
            *(f"{key} = {value!r}" for key, value in e.limits.to_toml().items()),
            "",
        ]
    return "\n".join(out)


def load_lockfile(path: Path, *, missing_ok: bool = True) -> Lockfile:
    """Read `plugins.lock`; a missing file is an empty lock when `missing_ok`."""
    if missing_ok and not path.exists():
        return Lockfile(path)
    doc = TomlDoc.load(path, LockfileError)
    top = doc.data
    doc.unknown_keys(top, {"version", "plugin"})
    fmt = doc.get(top, "version", int, None)
    if fmt != FORMAT_VERSION:
        raise doc.fail(f"version must be {FORMAT_VERSION} (this kernel's format), got {fmt}",
                       "", "version")
    plugins = doc.get(top, "plugin", list, [])
    base = path.parent.resolve()
    entries: list[LockEntry] = []
    for i, table in enumerate(plugins):
        entries.append(_parse_entry(doc, table, i, base))
    names = [e.name for e in entries]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise doc.fail(f"plugin {name!r} pinned twice", "plugin", None, i)
    return Lockfile(path, tuple(entries))


def _parse_entry(doc: TomlDoc, table: object, i: int, base: Path) -> LockEntry:
    if not isinstance(table, dict):
        raise doc.fail("each [[plugin]] must be a table", "plugin", None, i)
    t = "plugin"
    doc.unknown_keys(table, {"name", "version", "source", "component", "blake3", "config",
                             "grants", "limits"}, t, i)
    for key in ("name", "version", "component", "blake3"):
        if key not in table:
            raise doc.fail(f"[[plugin]] is missing {key!r}", t, None, i)
    name = doc.get(table, "name", str, None, table_name=t, index=i,
                   check=lambda v: None if NAME_RE.match(v) else "not a valid plugin name")
    version = doc.get(table, "version", str, None, table_name=t, index=i)
    source = doc.get(table, "source", str, ".", table_name=t, index=i)
    component = doc.get(table, "component", str, None, table_name=t, index=i)
    pin = doc.get(table, "blake3", str, None, table_name=t, index=i,
                  check=lambda v: None if _HEX64.match(v) else "must be 64 lowercase hex digits")
    config = doc.get(table, "config", str, "", table_name=t, index=i)
    gt = doc.get(table, "grants", dict, {}, table_name=t, index=i)
    gname = "plugin.grants"
    doc.unknown_keys(gt, {"publish", "subscribe", "kv", "vfs", "cap", "link"}, gname, i)
    grants = Grants(
        publish=doc.string_list(gt, "publish", table_name=gname, index=i),
        subscribe=doc.string_list(gt, "subscribe", table_name=gname, index=i),
        kv=doc.get(gt, "kv", bool, False, table_name=gname, index=i),
        vfs=doc.string_list(gt, "vfs", table_name=gname, index=i),
        cap=doc.string_list(gt, "cap", table_name=gname, index=i),
        link=doc.string_list(gt, "link", table_name=gname, index=i),
    )
    limits = parse_limits(doc, doc.get(table, "limits", dict, {}, table_name=t, index=i),
                          "plugin.limits", DEFAULT_LIMITS, i)
    return LockEntry(name, version, (base / source).resolve(), (base / component).resolve(),
                     pin, grants, limits, config)


def entry_for(manifest: Manifest, wasm: bytes) -> LockEntry:
    """The pin `astrid plugin install` records: the asks, limits and config the operator
    approved."""
    return LockEntry(manifest.name, manifest.version, manifest.path.parent.resolve(),
                     manifest.component, digest(wasm), manifest.asks, manifest.limits,
                     manifest.config)


def read_verified(entry: LockEntry, component: Path | None = None) -> bytes:
    """The component's bytes, only if their blake3 equals the pin (else `VerifyError`).

    Compile exactly the bytes returned, never re-read the file.
    """
    path = component or entry.component
    try:
        wasm = path.read_bytes()
    except FileNotFoundError:
        raise VerifyError(f"plugin {entry.name}: component {path} is missing") from None
    except OSError as e:
        raise VerifyError(f"plugin {entry.name}: cannot read {path}: {e.strerror}") from None
    actual = digest(wasm)
    if actual != entry.blake3:
        raise VerifyError(
            f"plugin {entry.name}: {path} does not match plugins.lock "
            f"(blake3 {actual[:16]}…, pinned {entry.blake3[:16]}…); "
            f"reinstall it with `astrid plugin install` if the change is yours")
    return wasm
