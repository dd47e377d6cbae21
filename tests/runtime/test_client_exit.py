"""How the `astrid` program leaves (client_cli.entry).

A process that ran the embedded SurrealDB engine must not go through the
interpreter's finalization: one of the engine's threads, calling back into a
finalizing Python, aborted `astrid log` now and then (exit -6 after its output
was written; Debian 13's run of
test_recording_daemon.py::test_log_show_and_replay_survive_kill_9). The abort
itself depends on timing; these tests pin the way out that avoids it."""

from __future__ import annotations

import sys

import pytest

from astrid_runtime import client_cli


class Left(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _exit(code: int) -> None:
    raise Left(code)


def test_after_the_engine_ran_it_leaves_without_finalization(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> int:
        print("written before leaving")
        return 3

    monkeypatch.setattr(client_cli, "main", main)
    monkeypatch.setitem(sys.modules, "surrealdb", sys.modules.get("surrealdb", object()))
    monkeypatch.setattr(client_cli.os, "_exit", _exit)
    with pytest.raises(Left) as left:
        client_cli.entry()
    assert left.value.code == 3
    assert capsys.readouterr().out == "written before leaving\n"


def test_without_the_engine_it_exits_as_usual(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_cli, "main", lambda: 2)
    monkeypatch.delitem(sys.modules, "surrealdb", raising=False)
    monkeypatch.setattr(client_cli.os, "_exit", _exit)
    with pytest.raises(SystemExit) as done:
        client_cli.entry()
    assert done.value.code == 2
