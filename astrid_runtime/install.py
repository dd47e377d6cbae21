"""`astrid plugin install`: what a plugin asks for, shown, checked, and pinned.

Installing is the operator's approval. The pin records the manifest's asks
(grants), limits and config as they were shown; the kernel enforces the pin, never
the manifest. Before anything is written:

- the asks and every limit are shown (`describe`);
- the kernel's policy is applied (`GrantPolicy`: limits under its
  ceilings, wildcard grants refused when the policy forbids them), a
  refusal naming each problem;
- a wildcard grant (`*` or `>` in a publish or subscribe pattern: it
  reaches topics of other plugins, `>` all of them) needs explicit
  consent, given by the caller (`--allow-wildcards`, or a `y` at a
  terminal).

Then the pinned bytes are compiled into the kernel's own (authenticated)
compile cache (`precompile`), so the kernel's first boot is warm instead of
spending seconds per Python plugin; a component wasmtime refuses is not
pinned at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from astrid_runtime.engine import CompileResult, KernelEngine
from astrid_runtime.errors import KernelError
from astrid_runtime.grants import DEFAULT_LIMITS, GrantPolicy
from astrid_runtime.lockfile import LockEntry, entry_for, read_verified
from astrid_runtime.manifest import Manifest, load_manifest


@dataclass(frozen=True)
class InstallPlan:
    """A pin ready to be written, and what the operator must see or approve first."""

    manifest: Manifest
    entry: LockEntry
    #: Publish/subscribe grants with wildcards (need consent).
    wildcards: tuple[str, ...]
    #: Reasons the kernel's policy refuses this pin (empty: it does not).
    problems: tuple[str, ...]


def is_component(wasm: bytes) -> bool:
    """The component-model binary header: magic, then layer 1 (a core module has 0)."""
    return wasm[:4] == b"\0asm" and wasm[6:8] == b"\x01\x00"


def plan_install(path: Path, policy: GrantPolicy) -> InstallPlan:
    """Read the manifest and component at `path`; raises `KernelError` on bad input."""
    manifest = load_manifest(path)
    try:
        wasm = manifest.component.read_bytes()
    except OSError as e:
        raise KernelError(f"{manifest.path}: component {manifest.component}: "
                          f"{e.strerror}") from None
    if not is_component(wasm):
        raise KernelError(f"{manifest.component}: not a WebAssembly component "
                          "(a core module? wrap it with `wasm-tools component new`)")
    entry = entry_for(manifest, wasm)
    return InstallPlan(manifest, entry, tuple(entry.grants.wildcards()),
                       tuple(policy.problems(entry.grants, entry.limits)))


def precompile(entry: LockEntry, cache_dir: Path) -> CompileResult:
    """Compile the pinned component into the kernel cache at `cache_dir` (the key comes
    from the home holding it, as the kernel's does); `CompileError` if it is no component."""
    engine = KernelEngine(cache_dir=cache_dir)
    return engine.compile(read_verified(entry), entry.blake3)


def describe(entry: LockEntry) -> list[str]:
    """What the pin grants, one line per item, for the operator to read."""
    g = entry.grants
    lines = [f"plugin {entry.name} {entry.version} (blake3 {entry.blake3[:16]}…) asks for:",
             f"  publish    {', '.join(g.publish) or '-'}",
             f"  subscribe  {', '.join(g.subscribe) or '-'}",
             f"  kv         {'yes' if g.kv else 'no'}",
             f"  vfs        {', '.join(g.vfs) or '-'}",
             f"  cap        {', '.join(g.cap) or '-'}"]
    if g.link:  # interfaces of other plugins it may call (links.py)
        lines.append(f"  link       {', '.join(g.link)}")
    default = DEFAULT_LIMITS.to_toml()
    limits = [f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
              for key, value in entry.limits.to_toml().items() if value != default[key]]
    lines.append(f"  limits     {', '.join(limits) or 'the defaults'}")
    config = entry.config if len(entry.config) <= 72 else entry.config[:71] + "…"
    lines.append(f"  config     {json.dumps(config, ensure_ascii=False) if config else '-'}")
    return lines


def refusal(plan: InstallPlan) -> str | None:
    """Why the kernel's policy refuses the pin, in one line (None: it does not)."""
    if not plan.problems:
        return None
    return (f"plugin {plan.entry.name} cannot be installed under this kernel's policy: "
            + "; ".join(plan.problems))


def wildcard_refusal(plan: InstallPlan) -> str:
    return (f"plugin {plan.entry.name} asks for wildcard grants ({', '.join(plan.wildcards)}), "
            "which reach other plugins' topics; re-run with --allow-wildcards to grant them")


__all__ = ["InstallPlan", "describe", "is_component", "plan_install", "precompile", "refusal",
           "wildcard_refusal"]
