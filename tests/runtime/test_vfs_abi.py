"""The `vfs` interface through WebAssembly: the shipped filetool in a real kernel.

The component is the committed, pinned `plugins/filetool/filetool.wasm`,
started with the grants each test names; its root is a plain directory
(the FUSE mount is the e2e tier's business). Every reply is awaited with
a bound (`trio.fail_after`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from astrid_runtime.abi.context import PluginContext
from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.bus import Tap
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import Refusal
from astrid_runtime.grants import Grants
from astrid_runtime.kernel import Kernel
from astrid_runtime.manifest import load_manifest
from astrid_runtime.supervisor import PluginSpec, State, Supervisor
from astrid_runtime.vfs import PluginVfs

FILETOOL = Path(__file__).resolve().parents[2] / "plugins" / "filetool"


@pytest.fixture(scope="session")
def filetool(engine: KernelEngine) -> Any:
    manifest = load_manifest(FILETOOL)
    return engine.compile(manifest.component.read_bytes()).component


class Session:
    """The filetool running with `vfs` grants, its root at `root`."""

    def __init__(self, kernel: Kernel, sup: Supervisor, audit: AuditLog, root: Path):
        self.kernel = kernel
        self.sup = sup
        self.audit = audit
        self.root = root
        self.tap = Tap(kernel.bus, "agent.response")

    @property
    def vfs(self) -> PluginVfs:
        assert self.sup.context.vfs is not None
        return self.sup.context.vfs

    async def ask(self, request: str) -> dict[str, Any]:
        self.kernel.publish("tools.fs", request.encode())
        with trio.fail_after(30):
            reply: dict[str, Any] = json.loads((await self.tap.receive()).payload)
        return reply


Start = Callable[..., Any]


@pytest.fixture
def start(kernel: Kernel, filetool: Any, tmp_path: Path) -> Start:
    async def go(*vfs_grant: str) -> Session:
        root = tmp_path / "root"
        root.mkdir(exist_ok=True)
        (root / "README").write_text("readme\n")
        audit = AuditLog(None)

        def hook(ctx: PluginContext) -> None:
            ctx.vfs = PluginVfs(ctx.name, ctx.grants.vfs, {"workspace": root},
                                audit=audit.record)

        kernel.context_hooks.append(hook)
        manifest = load_manifest(FILETOOL)
        grants = Grants(publish=("agent.response",), subscribe=("tools.fs",), vfs=vfs_grant)
        sup = kernel.start(PluginSpec("filetool", "0.1.0", filetool, "", grants,
                                      manifest.limits))
        with trio.fail_after(60):
            await sup.wait_for(lambda s: s.state in (State.RUNNING, State.DISABLED))
        assert sup.state is State.RUNNING, sup.last_error
        return Session(kernel, sup, audit, root)

    return go


async def test_edits_through_wasm_and_every_handle_is_dropped(start: Start) -> None:
    s: Session = await start("workspace")
    assert (await s.ask("write a/b.txt hello"))["ok"] is True
    assert (s.root / "a" / "b.txt").read_text() == "hello\n"
    assert len(s.vfs.table) == 0  # the guest dropped root and file: fds closed
    assert (await s.ask("append a/b.txt world"))["ok"] is True
    assert (await s.ask("cat a/b.txt"))["text"] == "hello\nworld\n"
    assert (await s.ask("ls"))["text"] == "README\na/"
    assert (await s.ask("mv a/b.txt c.txt"))["ok"] is True
    assert (await s.ask("rm a"))["ok"] is True
    assert sorted(os.listdir(s.root)) == ["README", "c.txt"]
    assert len(s.vfs.table) == 0
    assert s.vfs.table.next_rep >= 10  # handles were made, and all are gone


async def test_large_file_reads_in_chunks(start: Start) -> None:
    s: Session = await start("workspace")
    body = bytes(range(97, 123)) * (300 * 1024 // 26)
    (s.root / "big.txt").write_bytes(body)
    reply = await s.ask("cat big.txt")
    assert reply["ok"] is True
    assert reply["text"].startswith(body[:100].decode())
    assert f"({len(body) - 16 * 1024} more bytes)" in reply["text"]


async def test_read_only_grant_refuses_writes(start: Start) -> None:
    s: Session = await start("workspace:ro")
    before = sorted(os.listdir(s.root))
    for request in ("write x.txt no", "append README no", "rm README", "mkdir d",
                    "mv README R2", "replace README readme nope"):
        reply = await s.ask(request)
        assert reply["ok"] is False and reply["error"] == "denied", (request, reply)
    assert (await s.ask("cat README"))["text"] == "readme\n"
    assert sorted(os.listdir(s.root)) == before
    assert (s.root / "README").read_text() == "readme\n"
    refused = [line for line in s.audit.lines if line["event"] == "vfs.refused"]
    assert len(refused) >= 6 and all("read-only" in line["reason"] for line in refused)


async def test_root_not_granted(start: Start) -> None:
    s: Session = await start()
    reply = await s.ask("ls")
    assert reply["ok"] is False and reply["error"] == "denied"
    assert "vfs root 'workspace' not granted" in reply["text"]
    assert s.audit.lines[-1]["op"] == "root" and s.audit.lines[-1]["error"] == "denied"


async def test_escapes_refused_through_wasm(start: Start, tmp_path: Path) -> None:
    s: Session = await start("workspace")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, s.root / "out")
    os.symlink("/proc/self/root/etc/passwd", s.root / "magic")
    for request, kind in (("cat ../README", "invalid"), ("cat /etc/passwd", "invalid"),
                          ("write out/x.txt no", "denied"), ("cat magic", "denied"),
                          ("ls out", "denied")):
        reply = await s.ask(request)
        assert reply["ok"] is False and reply["error"] == kind, (request, reply)
    assert os.listdir(outside) == []


async def test_handles_close_when_the_plugin_stops(start: Start, kernel: Kernel) -> None:
    s: Session = await start("workspace")
    held = s.vfs.root("workspace")  # as if the instance still held a handle
    fd = s.vfs.table.get(held).fd
    assert os.readlink(f"/proc/self/fd/{fd}") == str(s.root)
    s.sup.stop()
    with trio.fail_after(30):
        await s.sup.wait_for(lambda sup: sup.state is State.STOPPED)
    assert len(s.vfs.table) == 0
    with pytest.raises(Refusal) as info:
        s.vfs.list(held, "")
    assert info.value.kind == "closed"
