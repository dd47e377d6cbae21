"""`astrid mcp`'s file tool client on a real kernel bus, without WebAssembly: answers
reach the caller whose id they name, in any order; a request nobody takes fails at once
instead of waiting out its timeout."""

from __future__ import annotations

import json
import threading

import pytest
import trio
import trio.testing

from astrid_runtime.bus import Doorbell
from astrid_runtime.grants import Limits
from astrid_runtime.kernel import Kernel
from astrid_runtime.mcp.filetool import FileToolClient, ToolRequestError

WAIT_S = 30


async def _fake_file_tool(kernel: Kernel, answered: trio.Event) -> None:
    """Takes two requests, then answers them in reverse order (plus one for nobody)."""
    doorbell = Doorbell(trio.lowlevel.current_trio_token(), threading.get_ident())
    endpoint = kernel.bus.attach("filetool", None, Limits(), doorbell)
    endpoint.subscribe("tools.fs")
    taken = []
    while len(taken) < 2:
        message = endpoint.take()
        if message is None:
            await doorbell.wait()
            continue
        taken.append(json.loads(message.payload))
    for request in [{"text": "x", "id": "mcp-nobody"}, *reversed(taken)]:
        reply = {"text": f"did {request['text']}", "ok": True, "plugin": "filetool",
                 "in_reply_to": request["id"]}
        endpoint.publish("agent.response", json.dumps(reply).encode())
    answered.set()
    kernel.bus.detach(endpoint)


async def test_answers_reach_their_callers(kernel: Kernel) -> None:
    client = FileToolClient(kernel.bus, kernel.publish)
    answered = trio.Event()
    results: dict[str, str] = {}
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.serve)
            # Subscribed before the asks go out (a plugin is up before `astrid mcp` serves).
            nursery.start_soon(_fake_file_tool, kernel, answered)
            await trio.testing.wait_all_tasks_blocked()

            async def ask(text: str) -> None:
                results[text] = (await client.ask(text, WAIT_S)).text

            async with trio.open_nursery() as asks:
                asks.start_soon(ask, "cat a.md")
                asks.start_soon(ask, "ls")
            await answered.wait()
            nursery.cancel_scope.cancel()
    assert results == {"cat a.md": "did cat a.md", "ls": "did ls"}


async def test_a_request_nobody_takes_fails_at_once(kernel: Kernel) -> None:
    client = FileToolClient(kernel.bus, kernel.publish)
    with trio.fail_after(WAIT_S):  # far below the ask's own timeout
        with pytest.raises(ToolRequestError, match="did not take the request"):
            await client.ask("ls", 3600)
