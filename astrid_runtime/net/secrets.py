"""Secrets the kernel adds to plugins' HTTP requests (API keys): plugins never see them.

`$ASTRID_HOME/secrets.toml` (or `astrid run --secrets FILE`; `--api-key-env VAR`
adds one for the provider's endpoint):

    [[secret]]
    name = "openai"                 # named in audit lines, never the value
    hosts = ["api.openai.com"]      # host globs, as in `net.http:` grants
    plugins = ["llm-openai"]        # plugin-name globs (default: every plugin)
    header = "Authorization"        # default
    env = "OPENAI_API_KEY"          # the value comes from the kernel's environment...
    prefix = "Bearer "              # ...after this prefix (default "Bearer ")
    # value = "Bearer sk-..."       # ...or is written here (keep the file 0600)

The kernel sets the header on a matching request after the approval
pipeline saw it (audit lines name the secret, not its value), replacing
any header of that name the plugin sent. Redirects are not followed, so
a secret only ever goes to a host its entry names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from astrid_runtime.errors import ConfigError
from astrid_runtime.net.hosts import Target, allowed
from astrid_runtime.tomlfile import TomlDoc

SECRETS_FILE = "secrets.toml"
_KEYS = {"name", "hosts", "plugins", "header", "env", "prefix", "value"}


@dataclass(frozen=True, repr=False)
class Secret:
    name: str
    hosts: tuple[str, ...]
    plugins: tuple[str, ...]
    header: str
    value: str

    def __repr__(self) -> str:  # never print the value
        return f"Secret({self.name!r}, hosts={self.hosts}, header={self.header!r})"

    def applies(self, plugin: str, target: Target) -> bool:
        return (any(fnmatchcase(plugin, g) for g in self.plugins)
                and allowed(self.hosts, target))


@dataclass(frozen=True)
class Secrets:
    """The kernel's secrets; `for_request` picks the headers one request gets."""

    entries: tuple[Secret, ...] = ()

    def for_request(self, plugin: str, target: Target) -> list[Secret]:
        return [s for s in self.entries if s.applies(plugin, target)]

    def values(self) -> list[str]:
        return [s.value for s in self.entries]

    def plus(self, more: Sequence[Secret]) -> Secrets:
        return Secrets(self.entries + tuple(more))


def from_env(name: str, hosts: Sequence[str], plugins: Sequence[str], env_var: str,
             environ: Mapping[str, str] = os.environ, prefix: str = "Bearer ",
             header: str = "Authorization") -> Secret:
    """A secret whose value is `prefix + $env_var`; `ConfigError` when it is unset."""
    raw = environ.get(env_var)
    if not raw:
        raise ConfigError(f"secret {name}: environment variable {env_var} is not set")
    return Secret(name, tuple(h.lower() for h in hosts), tuple(plugins), header, prefix + raw)


def load_secrets(path: Path, environ: Mapping[str, str] = os.environ) -> Secrets:
    """Secrets from `path` (none when it does not exist); `ConfigError` naming the line."""
    if not path.exists():
        return Secrets()
    doc = TomlDoc.load(path)
    doc.unknown_keys(doc.data, {"secret"})
    out: list[Secret] = []
    for i, table in enumerate(doc.get(doc.data, "secret", list, [])):
        t = "secret"
        doc.unknown_keys(table, _KEYS, t, i)
        name = doc.get(table, "name", str, "", table_name=t, index=i)
        hosts = doc.string_list(table, "hosts", table_name=t, index=i)
        if not name or not hosts:
            raise doc.fail("a secret needs a name and hosts", t, None, i)
        plugins = doc.string_list(table, "plugins", table_name=t, index=i) or ("*",)
        header = doc.get(table, "header", str, "Authorization", table_name=t, index=i)
        value = doc.get(table, "value", str, None, table_name=t, index=i)
        env_var = doc.get(table, "env", str, None, table_name=t, index=i)
        if (value is None) == (env_var is None):
            raise doc.fail(f"secret {name}: give exactly one of value or env", t, None, i)
        if env_var is not None:
            prefix = doc.get(table, "prefix", str, "Bearer ", table_name=t, index=i)
            out.append(from_env(name, hosts, plugins, env_var, environ, prefix, header))
        else:
            out.append(Secret(name, tuple(h.lower() for h in hosts), plugins, header, value))
    return Secrets(tuple(out))


__all__ = ["SECRETS_FILE", "Secret", "Secrets", "from_env", "load_secrets"]
