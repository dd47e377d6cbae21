"""`astrid run --provider NAME`: the LLM agent instead of the keyword router.

Without `--provider`, `astrid run` boots the pinned plugins except the
agent's (the orchestrator and every `llm-*` provider), so the keyword router
answers. With it, the router is left out and the orchestrator plus the
provider plugin `llm-NAME` are booted; `--endpoint` and `--model` replace
those keys in the provider's pinned config, and the orchestrator is told
which provider to call, so swapping providers is configuration alone. The
kernel's HTTP service is attached (service.py) with the kernel's secrets
(`$ASTRID_HOME/secrets.toml`, `--secrets FILE`, and `--api-key-env VAR`, a
bearer token for the endpoint's host that only the provider's requests get).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from astrid_runtime.abi.context import PluginContext
from astrid_runtime.errors import ConfigError
from astrid_runtime.kernel import Kernel
from astrid_runtime.lockfile import load_lockfile
from astrid_runtime.net import hosts
from astrid_runtime.net.secrets import SECRETS_FILE, Secrets, from_env, load_secrets
from astrid_runtime.net.service import HttpService

ORCHESTRATOR = "orchestrator"
ROUTER = "router"


def is_agent_plugin(name: str) -> bool:
    """The agent's plugins, left out of a plain `astrid run` (and the shipped-plugin tests)."""
    return name == ORCHESTRATOR or name.startswith("llm-")


@dataclass(frozen=True)
class AgentOptions:
    provider: str
    endpoint: str | None = None
    model: str | None = None
    secrets: Secrets = field(default_factory=Secrets)

    @property
    def plugin(self) -> str:
        return f"llm-{self.provider}"


def add_arguments(p: Any) -> None:
    """The agent's options on `astrid run`'s parser."""
    p.add_argument("--provider", help="run the LLM agent with provider plugin llm-PROVIDER "
                   "(e.g. openai: any OpenAI-compatible server) instead of the keyword router")
    p.add_argument("--endpoint", help="the provider's API base URL, e.g. "
                   "http://127.0.0.1:11434/v1 (Ollama) or http://127.0.0.1:8080/v1 (llama.cpp)")
    p.add_argument("--model", help="the model name the endpoint serves")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the "
                   "API key; the kernel sends it as a bearer token, the plugin never sees it")
    p.add_argument("--secrets", type=Path, help=f"kernel secrets file (default: "
                   f"$ASTRID_HOME/{SECRETS_FILE} if it exists)")


def agent_options(args: argparse.Namespace, home: Path, lockfile: Path,
                  environ: Mapping[str, str] = os.environ) -> AgentOptions | None:
    """The agent's options, or None without `--provider`; `ConfigError` for bad input
    (checked before anything is mounted: the plugins pinned, the endpoint granted)."""
    provider = getattr(args, "provider", None)
    if provider is None:
        given = [f"--{n.replace('_', '-')}" for n in ("endpoint", "model", "api_key_env")
                 if getattr(args, n, None)]
        if given:
            raise ConfigError(f"{', '.join(given)} needs --provider")
        return None
    if not provider.replace("-", "").isalnum() or not provider.islower():
        raise ConfigError(f"--provider {provider!r}: lowercase letters, digits and '-'")
    target = hosts.parse_url(args.endpoint) if args.endpoint else None
    secrets = load_secrets(args.secrets or home / SECRETS_FILE, environ)
    if args.api_key_env:
        if target is None:
            raise ConfigError("--api-key-env needs --endpoint (the host the key is for)")
        secrets = secrets.plus([from_env(f"{provider}-api-key", [target.hostport],
                                         [f"llm-{provider}"], args.api_key_env, environ)])
    agent = AgentOptions(provider, args.endpoint, args.model, secrets)
    _check_pins(lockfile, agent)
    return agent


def _check_pins(lockfile: Path, agent: AgentOptions) -> None:
    by_name = {e.name: e for e in load_lockfile(lockfile).entries}
    for needed in (ORCHESTRATOR, agent.plugin):
        if needed not in by_name:
            raise ConfigError(f"--provider {agent.provider}: plugin {needed} is not pinned in "
                              f"{lockfile.name}; install it with `astrid plugin install`")
    if agent.endpoint:
        target = hosts.parse_url(agent.endpoint)
        globs = hosts.host_globs(by_name[agent.plugin].grants.cap)
        if not hosts.allowed(globs, target):
            raise ConfigError(
                f"--endpoint {agent.endpoint}: host {target.hostport} is not in "
                f"{agent.plugin}'s net.http grant ({', '.join(globs) or 'none'}); add "
                f"`net.http:{target.host}` to its cap and reinstall it")


def boot_sources(lockfile: Path, agent: AgentOptions | None) -> tuple[Path, ...]:
    """The pinned plugins `astrid run` boots (their directories, for `BootPlan`): without
    the agent's, or with them and without the router. Blocking (reads the lockfile)."""
    entries = load_lockfile(lockfile).entries
    if agent is None:
        return tuple(e.source for e in entries if not is_agent_plugin(e.name))
    keep = [e for e in entries if e.name != ROUTER
            and (not is_agent_plugin(e.name) or e.name in (ORCHESTRATOR, agent.plugin))]
    return tuple(e.source for e in keep)


def _merged(config: str, changes: dict[str, Any]) -> str:
    try:
        base = json.loads(config) if config.strip() else {}
    except ValueError:
        base = {}
    return json.dumps({**(base if isinstance(base, dict) else {}), **changes})


def _parker(kernel: Kernel) -> Callable[[int], None]:
    """`park(by)` from a guest thread: move the kernel's guest-thread limit by `by`."""
    token = trio.lowlevel.current_trio_token()
    limiter = kernel.limiter

    def adjust(by: int) -> None:
        limiter.total_tokens = max(1, int(limiter.total_tokens) + by)

    def park(by: int) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(adjust, by, trio_token=token)
    return park


def attach(kernel: Kernel, agent: AgentOptions) -> HttpService:
    """Give every plugin the kernel's HTTP service, and the agent's plugins their config;
    call before `kernel.boot`, in the trio thread. The service is closed when the
    kernel stops."""
    service = HttpService(agent.secrets, park=_parker(kernel))
    overrides: dict[str, dict[str, Any]] = {
        ORCHESTRATOR: {"provider": agent.provider},
        agent.plugin: {k: v for k, v in (("endpoint", agent.endpoint),
                                          ("model", agent.model)) if v},
    }

    def hook(ctx: PluginContext) -> None:
        ctx.http = service
        sup = kernel.supervisors.get(ctx.name)
        changes = overrides.get(ctx.name)
        if sup is not None and changes:  # read by the first init, which has not run yet
            sup.spec = replace(sup.spec, config=_merged(sup.spec.config, changes))

    kernel.context_hooks.append(hook)
    kernel.stop_hooks.append(service.close)
    return service


__all__ = ["AgentOptions", "add_arguments", "agent_options", "attach", "boot_sources",
           "is_agent_plugin"]
