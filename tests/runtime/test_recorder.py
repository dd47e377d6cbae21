"""The recorded bus (issue 15): deliveries and host calls in SurrealDB, retention,
switching it off, and a recording that survives kill -9 of the kernel."""

from __future__ import annotations

import gc
import os
import pickle
import socket
import zlib
from pathlib import Path

import pytest
import trio
from surrealdb import RecordID
from testkit import MemoryKv, running, spec
from wasmtime.component import Component

from astrid_runtime.abi.canon import Err, Ok
from astrid_runtime.bus import Tap
from astrid_runtime.config import load_config
from astrid_runtime.engine import KernelEngine
from astrid_runtime.errors import ConfigError
from astrid_runtime.grants import Grants
from astrid_runtime.kernel import Kernel, open_kernel
from astrid_runtime.recorder.chunk import RecordingError, Rows
from astrid_runtime.recorder.query import answer
from astrid_runtime.recorder.recorder import recording
from astrid_runtime.recorder.settings import RecordingSettings
from astrid_runtime.recorder.store import RecordingStore

RELAY = Grants(publish=("chain.>",), subscribe=("chain",))


def settings(tmp_path: Path, **kw: object) -> RecordingSettings:
    return RecordingSettings(url=f"surrealkv://{tmp_path / 'rec'}", **kw)  # type: ignore[arg-type]


async def test_every_delivery_and_its_host_calls_are_recorded(
        kernel: Kernel, components: dict[str, Component], tmp_path: Path) -> None:
    async with recording(kernel, settings(tmp_path), tmp_path) as rec:
        assert rec is not None
        await running(kernel, spec(components, "relay", "first", config="chain", grants=RELAY))
        tap = Tap(kernel.bus, "chain.r")
        for n in range(5):
            kernel.publish("chain", bytes([n]))
        for _ in range(5):
            await tap.receive()
        await rec.wait_calls(5)
        durable = await rec.flush()
        reply = await trio.to_thread.run_sync(answer, rec.store, {"host": True})
    events = reply["events"]
    assert durable == events[-1]["seq"] == 10
    inputs = [e for e in events if e["topic"] == "chain"]
    outputs = [e for e in events if e["topic"] == "chain.r"]
    assert [e["to"] for e in inputs] == [["first"]] * 5
    assert {e["sender"] for e in inputs} == {"client"}
    assert {e["sender"] for e in outputs} == {"first"} and all(e["to"] == [] for e in outputs)
    first = inputs[0]["calls"]
    # The instance's init (its subscribe) is recorded before the first call it took.
    assert [(c["plugin"], c["outcome"]) for c in first] == [("first", "init"), ("first", "ok")]
    assert [h[0] for h in first[0]["host"]] == ["bus.subscribe"]
    name, args, result = first[1]["host"][0]
    assert name == "bus.publish" and args[0] == "chain.r" and result == {"ok": None}


async def test_the_seq_goes_on_after_a_restart_and_log_filters(
        engine: KernelEngine, components: dict[str, Component], tmp_path: Path) -> None:
    for _ in range(2):
        async with open_kernel(engine, MemoryKv()) as kernel, \
                recording(kernel, settings(tmp_path), tmp_path) as rec:
            assert rec is not None
            kernel.publish("a.one", b"1")
            kernel.publish("b.two", b"2")
    store = RecordingStore(f"surrealkv://{tmp_path / 'rec'}")
    try:
        everything = answer(store, {})["events"]
        only_a = answer(store, {"topic": "a.*"})["events"]
        ranged = answer(store, {"from": 2, "to": 3})["events"]
        last = answer(store, {"limit": 1})["events"]
    finally:
        store.close()
    assert [e["seq"] for e in everything] == [1, 2, 3, 4]
    assert [e["seq"] for e in only_a] == [1, 3]
    assert [e["seq"] for e in ranged] == [2, 3]
    assert [e["seq"] for e in last] == [4]


async def test_retention_bounds_the_store(kernel: Kernel, tmp_path: Path) -> None:
    async with recording(kernel, settings(tmp_path, max_events=10), tmp_path) as rec:
        assert rec is not None
        for n in range(8):
            for _ in range(5):
                kernel.publish("x", bytes([n]))
            await rec.flush()
        stats = rec.store.stats()
        seqs = [e.seq for e in rec.store.read().events]
    assert stats["events"] <= 10 + 5
    assert seqs == list(range(41 - len(seqs), 41)) and len(seqs) >= 10
    # On disk too, as the next kernel or `astrid log` opens it: the dropped chunks are gone.
    store = RecordingStore(f"surrealkv://{tmp_path / 'rec'}", max_events=10)
    try:
        assert [e.seq for e in store.read().events] == seqs
        assert store.stats()["chunks"] == len(seqs) // 5
    finally:
        store.close()


async def test_recording_switched_off_records_nothing(kernel: Kernel, tmp_path: Path) -> None:
    async with recording(kernel, settings(tmp_path, enabled=False), tmp_path) as rec:
        assert rec is None
        assert kernel.bus.on_record is None
        kernel.publish("x", b"1")
    assert not (tmp_path / "rec").exists()


class _Evil:
    """What a tampered store might hold: a pickle that calls a function when loaded."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.getenv, ("HOME",))


def test_a_tampered_chunk_cannot_run_code(tmp_path: Path) -> None:
    store = RecordingStore(f"surrealkv://{tmp_path / 'rec'}")
    try:
        blob = zlib.compress(pickle.dumps(([(1, 0.0, "x", "c", None, b"", [])], [_Evil()])))
        store._query("CREATE $r CONTENT {n: 1, ev_lo: 1, ev_hi: 1, call_lo: 1, "
                     "call_hi: 1, events: 1, blob: $b}", {"r": RecordID("chunk", [1]),
                                                          "b": blob})
        with pytest.raises(RecordingError, match=r"may not name os\.getenv"):
            store.read()
    finally:
        store.close()


def test_log_finds_the_newest_matches_however_far_back(tmp_path: Path) -> None:
    store = RecordingStore(f"surrealkv://{tmp_path / 'rec'}")
    try:
        for first in range(1, 6001, 1000):
            store.write(Rows(events=[(n, 0.0, "rare" if n < 4 else "common", "client", None,
                                      b"", []) for n in range(first, first + 1000)]))
        rare = answer(store, {"topic": "rare", "limit": 2})["events"]
        newest = answer(store, {"limit": 3})["events"]
    finally:
        store.close()
    assert [e["seq"] for e in rare] == [2, 3]
    assert [e["seq"] for e in newest] == [5998, 5999, 6000]


async def test_what_waits_for_a_flush_leaves_the_garbage_collector_alone(
        kernel: Kernel, components: dict[str, Component], tmp_path: Path) -> None:
    # Long-lived containers waiting for a flush were most of what recording cost (young
    # collections, then full ones with every thread stopped): every pending row must be
    # a tuple the collector untracks at its first look (recorder.py, "The garbage
    # collector").
    async with recording(kernel, settings(tmp_path, flush_ms=3_600_000), tmp_path) as rec:
        assert rec is not None
        await running(kernel, spec(components, "relay", "first", config="chain", grants=RELAY))
        tap = Tap(kernel.bus, "chain.r")
        for n in range(5):
            kernel.publish("chain", bytes([n]))
        for _ in range(5):
            await tap.receive()
        await rec.wait_calls(5)
        pending = [*rec._events, *rec._calls]  # before any flush (flush_ms: an hour)
        gc.collect(0)
        tracked = [row for row in pending if gc.is_tracked(row)]
        assert len(pending) == 10 + 6 and tracked == []  # 10 events; 5 calls and the init
        await rec.flush()
        calls = rec.store.read().calls
    assert [(c.outcome, [h.name for h in c.host]) for c in calls[:2]] == [
        ("init", ["bus.subscribe"]), ("ok", ["bus.publish"])]


def test_chunks_holding_host_calls_as_lists_still_read(tmp_path: Path) -> None:
    # Chunks written before the recorder pickled each call's host calls hold the list.
    store = RecordingStore(f"surrealkv://{tmp_path / 'rec'}")
    try:
        store.write(Rows(calls=[(1, "p", "0", "ok", "", [("kv.get", ["k"], Ok(b"v"))], [],
                                 None)]))
        store.write(Rows(calls=[(2, "p", "0", "ok", "", pickle.dumps([("kv.get", ["k"],
                                                                        Err("gone"))]),
                                 (), None)]))
        calls = store.read().calls
    finally:
        store.close()
    assert [(c.seq, c.host[0].name, c.host[0].result) for c in calls] == [
        (1, "kv.get", {"ok": {"b": "dg=="}}), (2, "kv.get", {"err": "gone"})]


def test_the_config_takes_a_server_url_and_names_the_line_of_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'home = "{tmp_path / "home"}"\n[recording]\nurl = "ws://db.example:8000"\n'
                    'username = "astrid"\npassword_file = "rec.password"\n')
    settings = load_config(good).recording
    assert (settings.url, settings.username) == ("ws://db.example:8000", "astrid")
    assert settings.password_file == tmp_path / "home" / "rec.password"  # relative to home
    for body, line, why in (('url = "foo://x"', 3, "must be surrealkv://PATH"),
                            ('url = "ws://"', 3, "names no server"),
                            ('url = "mem://"\nusername = "u"\npassword_file = "p"', 4,
                             "username is for a SurrealDB server"),
                            ('url = "http://h:1"\nusername = "u"', 4, "go together")):
        bad = tmp_path / "bad.toml"
        bad.write_text(f"# astridd\n[recording]\n{body}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(bad)
        assert str(caught.value).startswith(f"{bad}:{line}: ") and why in str(caught.value)
        assert "\n" not in str(caught.value)


def test_an_unreachable_or_silent_server_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as closed, socket.socket() as silent:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: the connection is refused
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # never accepted: the handshake gets no answer
        for url, kw, why in ((f"ws://127.0.0.1:{closed.getsockname()[1]}", {}, "refused|failed"),
                             (f"http://127.0.0.1:{closed.getsockname()[1]}", {}, "connect"),
                             (f"ws://127.0.0.1:{silent.getsockname()[1]}",
                              {"server_timeout": 0.2}, "no answer in 0.2 s")):
            with pytest.raises(RecordingError, match=why) as caught:
                RecordingStore(url, **kw)  # type: ignore[arg-type]
            assert str(caught.value).startswith(f"cannot open the recording {url}: ")
            assert "\n" not in str(caught.value)


def test_call_rows_flat_when_plain_pickled_when_not(tmp_path: Path) -> None:
    """A call whose host calls hold plain values is one flat tuple (nothing for the
    collector to track); one holding containers keeps them pickled; both read back
    the same, and a truncated flat row is a corrupt chunk, not a crash."""
    from astrid_runtime.recorder.chunk import FLAT_ROW, Call
    from astrid_runtime.recorder.recorder import _call_row

    plain = _call_row(3, "p", "1", "ok", "", [("kv.get", ["k"], Ok(b"v")),
                                               ("bus.publish", ["t", b"x"], Ok(None))],
                      ["f.txt"], "bus-3")
    nested = _call_row(4, "p", "1", "error", "no", [("vfs.readdir", [7], Ok(["a", "b"]))],
                       [], None)
    assert plain[5] == FLAT_ROW
    gc.collect(0)
    assert not gc.is_tracked(plain)
    assert isinstance(nested[5], bytes)
    store = RecordingStore(f"surrealkv://{tmp_path / 'rec'}")
    try:
        store.write(Rows(calls=[plain, nested]))
        calls = store.read().calls
    finally:
        store.close()
    assert [(c.seq, c.outcome, c.wrote, c.snapshot) for c in calls] == [
        (3, "ok", ("f.txt",), "bus-3"), (4, "error", (), None)]
    assert [h.name for h in calls[0].host] == ["kv.get", "bus.publish"]
    assert calls[0].host == Call.from_row(plain).host
    assert calls[1].host[0].name == "vfs.readdir"
    with pytest.raises(RecordingError, match="corrupt"):
        Call.from_row(plain[:-1])
