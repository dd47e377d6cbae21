"""The standard AWS settings chain, read once when an S3 driver opens.

Order, as the AWS CLI: credentials from the environment
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), then the
profile (`profile` option, else `AWS_PROFILE`, else `default`) in the shared
credentials file (`AWS_SHARED_CREDENTIALS_FILE`, `~/.aws/credentials`) and
the config file (`AWS_CONFIG_FILE`, `~/.aws/config`, section
`[profile NAME]`); with neither, obstore's own chain (web identity,
container, instance metadata). Region and endpoint: the mount option, then
`AWS_REGION`/`AWS_DEFAULT_REGION` and `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`,
then the profile's `region`/`endpoint_url`.

Secrets live only in the returned `AwsSettings` (kept out of its repr) and in
the obstore client built from it; nothing here logs or stores them.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from astrid_fs.drivers.errors import ConfigError

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class AwsSettings:
    """Resolved settings; `credential_source` says where the keys came from."""

    region: str
    endpoint: str | None
    credential_source: str
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)


def _files(env: Mapping[str, str]) -> tuple[Path, Path]:
    home = Path(env.get("HOME") or Path.home())
    creds = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials")
    config = Path(env.get("AWS_CONFIG_FILE") or home / ".aws" / "config")
    return creds.expanduser(), config.expanduser()


def _section(path: Path, name: str) -> dict[str, str] | None:
    parser = configparser.RawConfigParser()
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        return None
    except (OSError, configparser.Error) as e:
        # The message names the file and line, never a value.
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"cannot read {path}: {first}") from None
    if not parser.has_section(name):
        return None
    return dict(parser.items(name))


def resolve(*, profile: str | None, region: str | None, endpoint: str | None,
            anonymous: bool, env: Mapping[str, str] | None = None) -> AwsSettings:
    """Resolve region, endpoint and credentials (see the module docstring)."""
    env = os.environ if env is None else env
    named = profile or env.get("AWS_PROFILE") or None
    name = named or "default"
    creds_file, config_file = _files(env)
    from_creds = _section(creds_file, name)
    from_config = _section(config_file, name if name == "default" else f"profile {name}")
    if named is not None and from_creds is None and from_config is None:
        raise ConfigError(f"AWS profile {name!r} not found in {creds_file} or {config_file}")
    merged = {**(from_config or {}), **(from_creds or {})}

    region = (region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
              or merged.get("region") or DEFAULT_REGION)
    endpoint = (endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
                or merged.get("endpoint_url") or None)
    if anonymous:
        return AwsSettings(region, endpoint, "anonymous (unsigned requests)")
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return AwsSettings(region, endpoint, "environment", key, secret,
                           env.get("AWS_SESSION_TOKEN") or None)
    key, secret = merged.get("aws_access_key_id"), merged.get("aws_secret_access_key")
    if key and secret:
        where = creds_file if from_creds and "aws_access_key_id" in from_creds else config_file
        return AwsSettings(region, endpoint, f"profile {name} ({where})", key, secret,
                           merged.get("aws_session_token") or None)
    return AwsSettings(region, endpoint, "instance/container credentials chain")
