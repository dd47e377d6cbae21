"""The kernel's exception hierarchy.

Every failure the kernel reports to a person is a `KernelError` subclass
carrying a message that says what to fix. The CLIs turn them into one line
and a non-zero exit; nothing below the CLI prints a traceback for them.

Host functions never raise these into a guest: the ABI modules catch them
and return the matching `error` variant of `astrid:kernel/types` instead.
"""

from __future__ import annotations


class KernelError(Exception):
    """Base of every error the kernel raises on purpose."""


class ConfigError(KernelError):
    """A malformed config file, manifest or lockfile (names file and line)."""


class ManifestError(ConfigError):
    """A `plugin.toml` that cannot be used."""


class LockfileError(ConfigError):
    """A `plugins.lock` that cannot be read or written."""


class VerifyError(KernelError):
    """A component that does not match its pin in `plugins.lock`, or has none."""


class CompileError(KernelError):
    """A component wasmtime will not compile or link (wrong world, bad bytes)."""


class PluginCrash(KernelError):
    """A guest trapped, ran out of fuel or time, or hit its memory limit."""

    def __init__(self, plugin: str, reason: str) -> None:
        super().__init__(f"plugin {plugin}: {reason}")
        self.plugin = plugin
        self.reason = reason


class PluginError(KernelError):
    """A guest export returned `err(...)`: the plugin refused, it did not crash."""


class Refusal(KernelError):
    """A request from a plugin or client refused for a reason it can fix.

    `kind` names the `astrid:kernel/types.error` case the ABI returns for it
    (`denied`, `invalid`, `too-large`, `rate-limited`, ...).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class BusError(Refusal):
    """A bus operation refused (bad topic or pattern, not granted, too large, full)."""


class ControlError(KernelError):
    """The control socket answered with an error, or could not be used."""


class KernelUnreachable(ControlError):
    """No kernel listens on the control socket."""


def first_kernel_error(group: BaseExceptionGroup[BaseException]) -> KernelError | None:
    """The first KernelError in a (nested) exception group, if any: what a
    CLI reports as its one line when a nursery fails."""
    for exc in group.exceptions:
        if isinstance(exc, KernelError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = first_kernel_error(exc)
            if found is not None:
                return found
    return None
