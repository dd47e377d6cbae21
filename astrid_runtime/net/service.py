"""The kernel's HTTP client for plugins: grant check, approval, secrets, streamed bodies.

Threading. Host functions run in the calling plugin's guest thread (the
supervisor runs guest calls in `trio.to_thread`), so the blocking `httpx`
client is called right there, as the S3 driver calls obstore's blocking API
from worker threads (FIELD-NOTES, "trio bridges"); nothing here touches the
trio loop. One `httpx.Client` (one connection pool) serves every plugin;
httpx documents it as thread-safe. Redirects are not followed: a 3xx comes
back to the plugin as it is, so a secret never reaches a host it was not
configured for.

Order of one `send`: parse the URL -> the plugin's `net.http:` grant covers
the host (else `denied` and an audit line) -> the approval pipeline decides
a `net.http` action on the URL (policy, interceptors, budgets, a person) ->
the kernel adds its secrets' headers -> the request goes out, and `send`
returns once the status and headers arrived. The body is read chunk by
chunk through `read`, as the server sends it (SSE streams included).

While a guest thread waits on the network it does not count against the
kernel's guest-thread limit (`park(+1)` before, `park(-1)` after, as a
`cap.request` waiting for a person does; approval/person.py), so a model
thinking for a minute does not starve the other plugins of threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING

import httpx

from astrid_runtime.errors import Refusal
from astrid_runtime.net import hosts
from astrid_runtime.net.secrets import Secrets

if TYPE_CHECKING:
    from astrid_runtime.approval.pipeline import ApprovalPipeline

#: Largest request body a plugin may send.
MAX_BODY = 4 * 1024 * 1024
MAX_HEADERS = 64
#: Largest chunk `read` returns (the WIT promises 64 KiB).
CHUNK = 64 * 1024
#: Open response bodies per plugin (each holds a connection).
MAX_OPEN = 8
#: Connect quickly or fail; a model may think for minutes between chunks.
TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=60.0, pool=10.0)


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    details: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HttpHead:
    status: int
    headers: tuple[tuple[str, str], ...]
    #: The body's handle for `read` / `drop`.
    rep: int


@dataclass
class _Body:
    response: httpx.Response
    chunks: Iterator[bytes]
    pending: bytes = b""


@dataclass
class HttpService:
    """Outbound HTTP for every plugin of one kernel; thread-safe."""

    secrets: Secrets = field(default_factory=Secrets)
    client: httpx.Client = field(
        default_factory=lambda: httpx.Client(timeout=TIMEOUT, follow_redirects=False,
                                             trust_env=False))
    _bodies: dict[tuple[str, int], _Body] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reps: Iterator[int] = field(default_factory=lambda: count(1))
    #: Raises (+1) and lowers (-1) the guest-thread limit around a network wait.
    park: Callable[[int], None] | None = None

    def _parked(self) -> AbstractContextManager[object]:
        park = self.park
        if park is None:
            return nullcontext()

        @contextlib.contextmanager
        def parked() -> Iterator[None]:
            park(1)
            try:
                yield
            finally:
                park(-1)
        return parked()

    def send(self, plugin: str, cap_grants: Sequence[str],
             pipeline: ApprovalPipeline | None, req: HttpRequest) -> HttpHead:
        """Check, approve and send `req` for `plugin`; `Refusal` says why not."""
        target = hosts.parse_url(req.url)
        globs = hosts.host_globs(cap_grants)
        if not hosts.allowed(globs, target):
            reason = (f"host {target.hostport} is not in the plugin's net.http grant "
                      f"({', '.join(globs) or 'no hosts'})")
            if pipeline is not None:
                pipeline.audit.record("cap.decision", {
                    "plugin": plugin, "kind": hosts.KIND, "resource": req.url[:1024],
                    "decision": "deny", "stage": "grant", "rule": "", "reason": reason})
            raise Refusal("denied", f"net.http on {req.url[:200]!r} denied (grant): {reason}")
        if pipeline is None:
            raise Refusal("unavailable", "this kernel has no approval pipeline, so no HTTP")
        self._validate(req)
        secrets = self.secrets.for_request(plugin, target)
        details = (("method", req.method.upper()),
                   *((("secrets", ",".join(s.name for s in secrets)),) if secrets else ()),
                   *req.details)
        from astrid_runtime.approval.pipeline import Action

        pipeline.request(Action(plugin, hosts.KIND, req.url, tuple(details)),
                         (*cap_grants, hosts.KIND))
        headers = [(k, v) for k, v in req.headers
                   if not any(k.lower() == s.header.lower() for s in secrets)]
        headers += [(s.header, s.value) for s in secrets]
        return self._open(plugin, req, headers)

    @staticmethod
    def _validate(req: HttpRequest) -> None:
        if not req.method or not req.method.isalpha():
            raise Refusal("invalid", f"bad HTTP method {req.method[:20]!r}")
        if len(req.body) > MAX_BODY:
            raise Refusal("too-large", f"request body over {MAX_BODY // 1024} KiB")
        if len(req.headers) > MAX_HEADERS:
            raise Refusal("too-large", f"more than {MAX_HEADERS} headers")

    def _open(self, plugin: str, req: HttpRequest, headers: list[tuple[str, str]]) -> HttpHead:
        with self._lock:
            if sum(1 for p, _ in self._bodies if p == plugin) >= MAX_OPEN:
                raise Refusal("too-large", f"more than {MAX_OPEN} open response bodies; "
                              "drop one first")
        try:
            request = self.client.build_request(req.method.upper(), req.url, headers=headers,
                                                content=req.body)
            with self._parked():
                response = self.client.send(request, stream=True)
        except httpx.InvalidURL as e:
            raise Refusal("invalid", f"bad URL: {e}") from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            raise Refusal("unavailable", f"cannot reach {req.url[:200]!r}: {_say(e)}"
                          ) from None
        except httpx.HTTPError as e:
            raise Refusal("io", f"request failed: {_say(e)}") from None
        with self._lock:
            rep = next(self._reps)
            self._bodies[(plugin, rep)] = _Body(response, response.iter_raw())
        return HttpHead(response.status_code, tuple(response.headers.multi_items()), rep)

    def read(self, plugin: str, rep: int) -> bytes:
        """The next chunk of a body (at most `CHUNK` bytes); empty at its end."""
        with self._lock:
            body = self._bodies.get((plugin, rep))
        if body is None:
            raise Refusal("closed", "this response body was closed")
        if not body.pending:
            try:
                with self._parked():
                    body.pending = next(body.chunks, b"")
            except httpx.HTTPError as e:
                raise Refusal("io", f"reading the response failed: {_say(e)}") from None
        chunk, body.pending = body.pending[:CHUNK], body.pending[CHUNK:]
        return chunk

    def drop(self, plugin: str, rep: int) -> None:
        """The guest dropped the body: close its connection. Never raises."""
        with self._lock:
            body = self._bodies.pop((plugin, rep), None)
        if body is not None:
            # Closing a broken connection can fail: nothing is left to do then.
            with contextlib.suppress(Exception):
                body.response.close()

    def close_plugin(self, plugin: str) -> None:
        """Close every body a plugin holds (its instance died or stopped)."""
        with self._lock:
            reps = [rep for p, rep in self._bodies if p == plugin]
        for rep in reps:
            self.drop(plugin, rep)

    def close(self) -> None:
        with self._lock:
            keys = list(self._bodies)
        for plugin, rep in keys:
            self.drop(plugin, rep)
        self.client.close()


def _say(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


__all__ = ["CHUNK", "HttpHead", "HttpRequest", "HttpService"]
