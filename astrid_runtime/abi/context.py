"""What a plugin's host functions can reach: its name, grants, limits, services.

One `PluginContext` per plugin, shared by its successive instances (a
restart keeps subscriptions and keyspace). Host functions are closures over
it; nothing is looked up by store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from astrid_runtime.bus import Endpoint, Message, Sender
from astrid_runtime.grants import Grants, Limits

if TYPE_CHECKING:
    from astrid_runtime.abi.links import LinkImports
    from astrid_runtime.approval.pipeline import ApprovalPipeline
    from astrid_runtime.dashboard.host import FrontendData
    from astrid_runtime.net.service import HttpService
    from astrid_runtime.vfs import PluginVfs


class KvBackend(Protocol):
    """The blocking, thread-safe store interface of `astrid_runtime.kv.KvStore`."""

    def get(self, plugin: str, key: str) -> bytes | None: ...
    def set(self, plugin: str, key: str, value: bytes) -> None: ...
    def delete(self, plugin: str, key: str) -> bool: ...
    def list(self, plugin: str, prefix: str, limit: int = 1000) -> list[str]: ...


class CallObserver(Protocol):
    """Sees each delivery to a plugin and the host calls it makes (recorder/): `begin`
    and `end` bracket one `on-message` in the guest's thread; `tap` is a `HostTap`."""

    def begin(self, message: Message) -> None: ...
    def end(self, outcome: str, detail: str) -> None: ...
    def tap(self, name: str, call: Callable[[], Any], args: list[Any],
            store: int | None) -> Any: ...


#: (plugin, level, message, fields) -> None; must be thread-safe.
LogSink = Callable[[str, str, str, list[tuple[str, str]]], None]
#: (plugin, function, exception) -> None; a host function hit a kernel bug.
BugSink = Callable[[str, str, BaseException], None]


@dataclass
class PluginContext:
    name: str
    grants: Grants
    limits: Limits
    endpoint: Endpoint
    kv: KvBackend | None
    log: LogSink
    report_bug: BugSink
    #: The plugin's VFS (roots, handle table); None when the kernel provides no roots.
    vfs: PluginVfs | None = None
    #: The kernel's approval pipeline for `cap.request`; None refuses every request.
    approvals: ApprovalPipeline | None = None
    #: The sender of the message being delivered now (`bus.sender`); None outside
    #: `on-message`. Set by the supervisor in the guest's thread around each delivery.
    current_sender: Sender | None = None
    #: Shims for the interfaces it imports from other plugins (link_registry.py).
    links: LinkImports | None = None
    #: Records (or, in a replay, answers) each delivery's host calls; None: not recording.
    observer: CallObserver | None = None
    #: Outbound HTTP (`astrid:kernel/http`, net/); None answers `unavailable`.
    http: HttpService | None = None
    #: What a frontend is told (`astrid:kernel/dashboard`, dashboard/host.py); None
    #: answers `unavailable`.
    frontend: FrontendData | None = None

    def release_handles(self) -> None:
        """Close what the plugin's instance held open (VFS handles, HTTP bodies).

        Handles live as long as the instance that holds them: a dropped Store does
        not run the guest's resource destructors, so the supervisor calls this when
        an instance is replaced (crash, restart) or the plugin stops. Never raises.
        """
        if self.vfs is not None:
            self.vfs.close_all()
        if self.http is not None:
            self.http.close_plugin(self.name)


#: Called with each plugin's context before its first instance starts: how the
#: kernel's owner hands a plugin its VFS roots and the approval pipeline.
ContextHook = Callable[[PluginContext], None]
