"""Issue 12: every host function, driven from a real guest with random values.

The pyecho component runs batches of host calls that the test generates
from a seeded `random.Random` — hostile paths, wildcards, NULs, huge and
empty strings, extreme u32/u64/s64 values, random bytes, every flag
combination — through the real canonical ABI into the kernel: `log`,
`bus` (including `current-sender`), `kv`, `cap`, `vfs` roots, directories
and files. The kernel must answer each with `ok` or an error value, never
`internal` (a kernel bug), never a trap, never a crash; and it must still
serve afterwards. A failing seed is printed so it can be replayed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import trio
from testkit import running, spec
from wasmtime.component import Component

from astrid_runtime.abi.context import PluginContext
from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.pipeline import ApprovalPipeline
from astrid_runtime.approval.policy import load_policy
from astrid_runtime.approval.token import TokenIssuer
from astrid_runtime.bus import Tap
from astrid_runtime.grants import Grants
from astrid_runtime.kernel import Kernel
from astrid_runtime.vfs import PluginVfs

BATCHES = 40
CALLS_PER_BATCH = 25
GUARD_S = 60  # bound on one batch's reply, never a measurement
GRANTS = Grants(publish=("echo.>",), subscribe=("echo.>",), kv=True, vfs=("workspace",),
                cap=("fs.commit", "net.http"))
#: The error cases a host function may answer with; `Error_Internal` is a kernel bug.
EXPECTED = {"ok", "Error_Denied", "Error_NotFound", "Error_Invalid", "Error_TooLarge",
            "Error_RateLimited", "Error_Closed", "Error_Io", "Error_Conflict",
            "Error_Unavailable"}
NASTY = ["", ".", "..", "/", "//", "/etc/passwd", "../../etc", "a/../../b", "a/./b", "\x00",
         "a\x00b", "é∂漢字🙂", " ", "\n", "x" * 300, "x" * 5000, "workspace", "/mnt/s3",
         ">", "*", "a..b", "echo.>", "echo.*", "echo.zz", "echo.zz.>", "-1", "%s%n"]


class Gen:
    """Random host-call arguments; topics stay under `echo.z*` so the guest never
    receives one of its own misbehaviour triggers (echo.loop, echo.fuzz, ...)."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def text(self) -> str:
        r = self.r
        if r.random() < 0.6:
            return r.choice(NASTY)
        alphabet = "ab./*>\\ \x00é-_"
        return "".join(r.choice(alphabet) for _ in range(r.randrange(0, 40)))

    def topic(self) -> str:
        t = self.text()
        return t if not t.startswith("echo.") or t.startswith("echo.z") else "echo.z" + t

    def raw(self) -> str:
        n = self.r.choice([0, 1, 7, 4096, self.r.randrange(0, 2048)])
        return bytes(self.r.randrange(256) for _ in range(n)).decode("latin-1")

    def u64(self) -> int:
        return self.r.choice([0, 1, 2**32, 2**63, 2**64 - 1, self.r.randrange(2**64)])

    def s64(self) -> int:
        return self.r.choice([-(2**63), -1, 0, 1, 2**63 - 1, self.r.randrange(-(2**40), 2**40)])

    def u32(self) -> int:
        return self.r.choice([0, 1, 4096, 2**32 - 1, 10**6, self.r.randrange(2**32)])

    def pairs(self) -> list[list[str]]:
        return [[self.text(), self.text()] for _ in range(self.r.randrange(0, 4))]

    def file_op(self) -> list[Any]:
        return self.r.choice([["read", self.u32()], ["write", self.raw()],
                              ["seek", self.s64(), self.r.randrange(3)], ["stat"]])

    def call(self) -> dict[str, Any]:
        r, t = self.r, self.text
        choices: list[dict[str, Any]] = [
            # levels up to INFO: a WARN line from the guest is a logged warning,
            # which the suite's log check would (rightly) report
            {"fn": "log.write", "args": [r.randrange(3), t(), self.pairs()]},
            {"fn": "bus.subscribe", "args": [self.topic()]},
            {"fn": "bus.unsubscribe", "args": [self.u64()]},
            {"fn": "bus.publish", "args": [self.topic(), self.raw()]},
            {"fn": "bus.current_sender"},
            {"fn": "kv.get", "args": [t()]},
            {"fn": "kv.set", "args": [t(), self.raw()]},
            {"fn": "kv.delete", "args": [t()]},
            {"fn": "kv.list", "args": [t()]},
            {"fn": "cap.request", "args": [r.choice(["fs.commit", "net.http", t()]), t(),
                                           self.pairs()]},
            {"fn": "vfs", "root": r.choice(["workspace", "workspace", t()]),
             "op": "open_file", "args": [t(), r.randrange(64)], "file_op": self.file_op()},
            {"fn": "vfs", "root": "workspace", "op": r.choice(["open_dir", "list", "stat",
                                                               "mkdir", "remove"]),
             "args": [t()]},
            {"fn": "vfs", "root": "workspace", "op": "rename", "args": [t(), t()]},
        ]
        return r.choice(choices)


async def test_random_host_calls_never_crash_the_kernel_or_the_guest(
        kernel: Kernel, components: dict[str, Component], tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "README").write_text("readme\n")

    # A policy that decides at once (allow one kind, deny the rest): an "ask" would
    # wait for a person, which is not what this test is about.
    (tmp_path / "policy.toml").write_text(
        'default = "deny"\n[[rule]]\nkind = "net.http"\ndecision = "allow"\n')
    policy = load_policy(tmp_path / "policy.toml")

    def hook(ctx: PluginContext) -> None:
        ctx.vfs = PluginVfs(ctx.name, ctx.grants.vfs, {"workspace": root})
        ctx.approvals = ApprovalPipeline(TokenIssuer(b"k" * 32), AuditLog(None), policy)

    kernel.context_hooks.append(hook)
    sup = await running(kernel, spec(components, "pyecho", "fuzzed", grants=GRANTS))
    out = Tap(kernel.bus, "echo.fuzz.out")
    seen: set[str] = set()
    for seed in range(BATCHES):
        gen = Gen(seed)
        batch = [gen.call() for _ in range(CALLS_PER_BATCH)]
        kernel.publish("echo.fuzz", json.dumps(batch).encode())
        with trio.fail_after(GUARD_S):
            outcomes = json.loads((await out.receive()).payload)
        unexpected = [(call, o) for call, o in zip(batch, outcomes, strict=True)
                      if o not in EXPECTED]
        assert not unexpected, f"seed {seed}: {unexpected[:3]}"
        seen.update(outcomes)
        assert sup.crashes == 0 and sup.errors == 0, f"seed {seed}: {sup.last_error}"
    # the batches reached both sides of the ABI: successes and refusals of many kinds
    assert {"ok", "Error_Denied", "Error_Invalid"} <= seen
    # and the kernel still serves
    echo = Tap(kernel.bus, "echo.out")
    kernel.publish("echo.in", b"still here")
    with trio.fail_after(GUARD_S):
        assert (await echo.receive()).payload == b"still here"
