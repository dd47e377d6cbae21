"""Handing an authenticated request to a frontend plugin, and its answer back.

The kernel has already checked the Host header, the login cookie, the POST
header and the body size (app.py) when `hand_off` runs. Here: the request as
the plugin sees it (path below its prefix, no cookie), one call of its
`handle` export between two bus deliveries (supervisor.call_guest: its fuel,
deadline and memory), and what the browser gets back: the plugin's status
(100-599, else 502), body (at most `MAX_ANSWER`), `content-type` and a
same-site `location` header, never anything else it set; the kernel's
Content-Security-Policy and security headers on every answer. A trap is a
500 for that request, and the supervisor restarts the plugin.
"""

from __future__ import annotations

from astrid_runtime.dashboard.host import SERVE_GRANT, Request, call_handler
from astrid_runtime.dashboard.http import Response
from astrid_runtime.errors import PluginCrash, PluginError, Refusal
from astrid_runtime.supervisor import State, Supervisor

#: Every plugin-served answer: scripts, styles and fetches from this origin only;
#: no inline script, no framing, no forms posting elsewhere.
CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
#: The largest answer a plugin may give (a session's diff is the big one).
MAX_ANSWER = 8 * 1024 * 1024
#: Request headers the plugin never sees: the login, and anything naming it.
WITHHELD = frozenset({"cookie", "authorization"})


def serves_http(sup: Supervisor) -> bool:
    """Whether the plugin's pinned grant lets the kernel hand it HTTP requests."""
    return SERVE_GRANT in sup.spec.grants.cap


def _clean(value: str) -> bool:
    return value.isprintable() and value.isascii()


def kept_headers(given: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The plugin's headers the browser may see: `content-type`, and `location` when it
    stays on this site; nothing with control or non-ASCII characters."""
    kept: list[tuple[str, str]] = []
    for name, value in given:
        name = name.lower()
        if not _clean(value):
            continue
        if name == "content-type" or (name == "location" and value.startswith("/")
                                      and not value.startswith("//")):
            kept.append((name, value))
    return tuple(kept)


async def hand_off(sup: Supervisor, method: str, path: str, query: str,
                   headers: dict[str, str], body: bytes) -> Response:
    """The frontend plugin's answer to one authenticated request (see the module)."""
    if sup.state is not State.RUNNING:
        return Response(503, f"plugin {sup.name} is {sup.state.value}".encode())
    shown = [(k, v) for k, v in headers.items() if k not in WITHHELD]
    request: Request = (method, path, query, shown, body)
    try:
        status, given, answer = await sup.call_guest(lambda i: call_handler(i, request))
    except PluginCrash as e:
        return Response(500, f"plugin {sup.name} crashed: {e.reason}".encode())
    except Refusal as e:
        return Response(501, e.message.encode())
    except PluginError as e:
        return Response(503, str(e).encode())
    if not 100 <= status <= 599:
        return Response(502, f"plugin {sup.name} answered status {status}".encode())
    if len(answer) > MAX_ANSWER:
        return Response(502, f"plugin {sup.name} answered {len(answer)} bytes, over "
                             f"{MAX_ANSWER}".encode())
    kept = kept_headers(given)
    content_type = next((v for k, v in kept if k == "content-type"), "application/octet-stream")
    extra = tuple((k, v) for k, v in kept if k != "content-type")
    return Response(status, answer, content_type,
                    headers=(("Content-Security-Policy", CSP), *extra))


__all__ = ["CSP", "MAX_ANSWER", "hand_off", "kept_headers", "serves_http"]
