"""KvStore against the real embedded SurrealDB engine (mem:// and surrealkv://)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from astrid_runtime.errors import KernelError, Refusal
from astrid_runtime.kv import (
    MAX_KEY_BYTES,
    MAX_LIST_LIMIT,
    MAX_PLUGIN_BYTES,
    MAX_VALUE_BYTES,
    KvClosed,
    KvError,
    KvInvalid,
    KvInvalidKey,
    KvStore,
    KvTooLarge,
    KvUnavailable,
    _prefix_successor,
    default_url,
)

REPO = Path(__file__).resolve().parents[2]

HOSTILE_KEYS = [
    "",
    " ",
    "'",
    '"',
    "`",
    "⟩",
    "⟨",
    ";",
    "'; DELETE kv; --",
    '"; REMOVE TABLE kv; --',
    "`kv`",
    "⟩; DELETE kv; ⟨",
    'kv:["a", "b"]',
    "$r",
    "{}",
    "..",
    "a/b\\c",
    "\n\t\r",
    "\x01\x7f",
    "é",
    "日本語",
    "🙂",
    "\U0010ffff",
    "\ud7ff\ue000",
    "x" * MAX_KEY_BYTES,
    "é" * (MAX_KEY_BYTES // 2),
]


@pytest.fixture
def store() -> Iterator[KvStore]:
    kv = KvStore("mem://")
    yield kv
    kv.close()


@pytest.fixture(scope="module")
def shared_store() -> Iterator[KvStore]:
    """One in-memory engine for the property tests; each example uses its own plugin."""
    kv = KvStore("mem://")
    yield kv
    kv.close()


def fresh_plugin() -> str:
    return f"plugin-{uuid.uuid4().hex}"


# -- basics -----------------------------------------------------------------


def test_errors_are_kernel_errors() -> None:
    for cls in (KvError, KvInvalid, KvInvalidKey, KvTooLarge, KvUnavailable, KvClosed):
        assert issubclass(cls, KernelError)
    assert issubclass(KvClosed, KvUnavailable)
    # The ABI passes Refusals through with their error case; the rest are "unavailable".
    assert isinstance(KvInvalidKey("k"), Refusal) and KvInvalidKey("k").kind == "invalid"
    assert isinstance(KvTooLarge("v"), Refusal) and KvTooLarge("v").kind == "too-large"
    assert KvUnavailable("down").kind == "unavailable"
    assert not isinstance(KvUnavailable("down"), Refusal)
    assert str(KvInvalidKey("bad key")) == "bad key"


def test_get_set_delete_roundtrip(store: KvStore) -> None:
    assert store.get("notes", "a") is None
    store.set("notes", "a", b"one")
    assert store.get("notes", "a") == b"one"
    store.set("notes", "a", b"two")
    assert store.get("notes", "a") == b"two"
    assert store.delete("notes", "a") is True
    assert store.delete("notes", "a") is False
    assert store.get("notes", "a") is None


def test_empty_value_is_not_missing(store: KvStore) -> None:
    store.set("p", "k", b"")
    assert store.get("p", "k") == b""
    assert store.list("p", "") == ["k"]


def test_list_prefix_sorted_and_limited(store: KvStore) -> None:
    keys = ["b", "a", "ab", "abc", "a\U0010ffff", "ac", "", "B", "é", "a.b", "a\x01"]
    for key in keys:
        store.set("p", key, key.encode())
    assert store.list("p", "") == sorted(keys)
    assert store.list("p", "a") == sorted(k for k in keys if k.startswith("a"))
    assert store.list("p", "ab") == ["ab", "abc"]
    assert store.list("p", "zz") == []
    assert store.list("p", "", limit=3) == sorted(keys)[:3]
    assert store.list("p", "a", limit=2) == sorted(k for k in keys if k.startswith("a"))[:2]


def test_list_prefix_at_code_point_edges(store: KvStore) -> None:
    keys = ["\ud7ff", "\ud7ffx", "\ue000", "\U0010ffff", "\U0010ffff\U0010ffff", "\U0010ffffa"]
    for key in keys:
        store.set("p", key, b"")
    store.set("q", "\U0010ffff", b"")  # a later plugin must not leak into the scan
    assert store.list("p", "\ud7ff") == ["\ud7ff", "\ud7ffx"]
    assert store.list("p", "\U0010ffff") == ["\U0010ffff", "\U0010ffffa", "\U0010ffff\U0010ffff"]
    assert store.list("p", "\U0010ffff\U0010ffff") == ["\U0010ffff\U0010ffff"]


def test_prefix_successor() -> None:
    assert _prefix_successor("") is None
    assert _prefix_successor("\U0010ffff\U0010ffff") is None
    assert _prefix_successor("ab") == "ac"
    assert _prefix_successor("a\U0010ffff") == "b"
    assert _prefix_successor("\ud7ff") == "\ue000"


def test_plugins_are_isolated(store: KvStore) -> None:
    # Names chosen so that one is a string prefix of the other.
    for plugin in ("p", "pa", "p\x01", "p.x", "q"):
        store.set(plugin, "k", plugin.encode())
        store.set(plugin, plugin, b"own")
    for plugin in ("p", "pa", "p\x01", "p.x", "q"):
        assert store.get(plugin, "k") == plugin.encode()
        assert store.list(plugin, "") == sorted(["k", plugin])
    assert store.delete("p", "pa") is False
    assert store.get("pa", "pa") == b"own"


# -- hostile keys and values ---------------------------------------------------


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_keys_stored_faithfully(store: KvStore, key: str) -> None:
    store.set("p", key, key.encode())
    store.set("p", "sentinel", b"still here")
    assert store.get("p", key) == key.encode()
    assert key in store.list("p", "")
    assert store.list("p", key)[0] == key
    assert store.get("p", "sentinel") == b"still here"
    # The same text as a plugin name is its own keyspace too.
    if key:
        store.set(key[: MAX_PLUGIN_BYTES // 4], "k", b"v")
        assert store.get(key[: MAX_PLUGIN_BYTES // 4], "k") == b"v"
    assert store.delete("p", key) is True
    assert store.get("p", key) is None


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("a\x00b", KvInvalidKey),
        ("\x00", KvInvalidKey),
        ("\ud800", KvInvalidKey),
        ("x" * (MAX_KEY_BYTES + 1), KvTooLarge),
        ("é" * (MAX_KEY_BYTES // 2 + 1), KvTooLarge),
    ],
)
def test_unstorable_keys_rejected_clearly(store: KvStore, key: str, error: type[KvError]) -> None:
    with pytest.raises(error, match="key"):
        store.set("p", key, b"v")
    with pytest.raises(error):
        store.get("p", key)
    with pytest.raises(error):
        store.delete("p", key)
    with pytest.raises(error, match="prefix"):
        store.list("p", key)
    assert store.list("p", "") == []


@pytest.mark.parametrize(
    ("plugin", "error"),
    [("", KvInvalidKey), ("a\x00", KvInvalidKey), ("x" * (MAX_PLUGIN_BYTES + 1), KvTooLarge)],
)
def test_bad_plugin_names_rejected(store: KvStore, plugin: str, error: type[KvError]) -> None:
    with pytest.raises(error, match="plugin name"):
        store.set(plugin, "k", b"v")
    with pytest.raises(error, match="plugin name"):
        store.list(plugin, "")


def test_wrong_types_rejected(store: KvStore) -> None:
    with pytest.raises(KvInvalidKey):
        store.set("p", 3, b"v")  # type: ignore[arg-type]
    with pytest.raises(KvInvalid, match="bytes"):
        store.set("p", "k", "text")  # type: ignore[arg-type]
    for limit in (0, -1, MAX_LIST_LIMIT + 1, True):
        with pytest.raises(KvInvalid, match="limit"):
            store.list("p", "", limit=limit)


def test_binary_values_roundtrip(store: KvStore) -> None:
    values = [
        b"\x00",
        b"\x00" * 1000,
        bytes(range(256)) * 64,
        os.urandom(MAX_VALUE_BYTES),
        b"\xff\xfe\x00\xd8",
    ]
    for i, value in enumerate(values):
        store.set("p", str(i), value)
    for i, value in enumerate(values):
        assert store.get("p", str(i)) == value
    store.set("p", "ba", bytearray(b"\x00ab"))
    store.set("p", "mv", memoryview(b"\x00mv"))
    assert store.get("p", "ba") == b"\x00ab"
    assert store.get("p", "mv") == b"\x00mv"


def test_oversized_value_rejected_and_old_value_kept(store: KvStore) -> None:
    store.set("p", "k", b"old")
    with pytest.raises(KvTooLarge, match=str(MAX_VALUE_BYTES)):
        store.set("p", "k", b"x" * (MAX_VALUE_BYTES + 1))
    assert store.get("p", "k") == b"old"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.text(max_size=40), value=st.binary(max_size=512))
def test_any_text_key_stored_or_rejected(shared_store: KvStore, key: str, value: bytes) -> None:
    plugin = fresh_plugin()
    try:
        shared_store.set(plugin, key, value)
    except KvInvalidKey:
        assert "\x00" in key
        assert shared_store.list(plugin, "") == []
        return
    assert shared_store.get(plugin, key) == value
    assert shared_store.list(plugin, "") == [key]
    assert shared_store.list(plugin, key) == [key]


class KvModel(RuleBasedStateMachine):
    """Random operations against the store and a dict, compared after each step."""

    # Small alphabet so prefixes collide often; includes quoting characters.
    keys = st.text(alphabet="ab'`⟩;\U0010ffff", max_size=4)

    def __init__(self) -> None:
        super().__init__()
        self.kv = KvStore("mem://")
        self.plugins = ("p", "pa")
        self.model: dict[tuple[str, str], bytes] = {}

    @rule(plugin=st.sampled_from(["p", "pa"]), key=keys, value=st.binary(max_size=8))
    def set(self, plugin: str, key: str, value: bytes) -> None:
        self.kv.set(plugin, key, value)
        self.model[plugin, key] = value

    @rule(plugin=st.sampled_from(["p", "pa"]), key=keys)
    def delete(self, plugin: str, key: str) -> None:
        existed = (plugin, key) in self.model
        assert self.kv.delete(plugin, key) is existed
        self.model.pop((plugin, key), None)

    @rule(plugin=st.sampled_from(["p", "pa"]), key=keys)
    def get(self, plugin: str, key: str) -> None:
        assert self.kv.get(plugin, key) == self.model.get((plugin, key))

    @rule(plugin=st.sampled_from(["p", "pa"]), prefix=keys, limit=st.integers(1, 6))
    def list_prefix(self, plugin: str, prefix: str, limit: int) -> None:
        expected = sorted(k for (p, k) in self.model if p == plugin and k.startswith(prefix))
        assert self.kv.list(plugin, prefix, limit) == expected[:limit]

    @invariant()
    def whole_keyspaces_agree(self) -> None:
        for plugin in self.plugins:
            expected = sorted(k for (p, k) in self.model if p == plugin)
            assert self.kv.list(plugin, "") == expected

    def teardown(self) -> None:
        self.kv.close()


TestKvModel = KvModel.TestCase
TestKvModel.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)


# -- threads and trio -----------------------------------------------------------


def test_threads_share_one_store(store: KvStore) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(100):
                key = f"{n}/{i}"
                store.set("p", key, key.encode())
                assert store.get("p", key) == key.encode()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.list("p", "", limit=MAX_LIST_LIMIT)) == 800


async def test_from_trio_worker_threads(store: KvStore) -> None:
    limiter = trio.CapacityLimiter(4)

    async def one(i: int) -> None:
        await trio.to_thread.run_sync(store.set, "p", f"k{i:03}", bytes([i]), limiter=limiter)
        got = await trio.to_thread.run_sync(store.get, "p", f"k{i:03}", limiter=limiter)
        assert got == bytes([i])

    async with trio.open_nursery() as nursery:
        for i in range(64):
            nursery.start_soon(one, i)
    keys = await trio.to_thread.run_sync(store.list, "p", "k", limiter=limiter)
    assert keys == [f"k{i:03}" for i in range(64)]


# -- lifecycle, persistence, crashes ---------------------------------------------


def test_closed_store_refuses(store: KvStore) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(KvClosed, match="closed"):
        store.get("p", "k")
    with pytest.raises(KvClosed):
        store.set("p", "k", b"v")


def test_bad_urls_are_unavailable(tmp_path: Path) -> None:
    with pytest.raises(KvUnavailable, match="scheme"):
        KvStore("nosuch://x")
    with pytest.raises(KvUnavailable, match="scheme"):
        KvStore(str(tmp_path))
    # A ws:// server that is not there fails the open, not the first call.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(KvUnavailable, match="cannot open"):
        KvStore(f"ws://127.0.0.1:{port}")


def test_default_url(tmp_path: Path) -> None:
    assert default_url(tmp_path) == f"surrealkv://{tmp_path}/kv"
    with KvStore.open_default(tmp_path) as kv:
        kv.set("p", "k", b"v")
    assert (tmp_path / "kv").is_dir()
    assert os.environ["SURREAL_SYNC_DATA"] == "true"


def test_survives_close_and_reopen(tmp_path: Path) -> None:
    url = f"surrealkv://{tmp_path}/kv"
    with KvStore(url) as kv:
        for i in range(50):
            kv.set("p", f"k{i:02}", os.urandom(100) + bytes([i]))
        kv.set("q", "big", b"\x00" * MAX_VALUE_BYTES)
        kv.delete("p", "k07")
        before = {k: kv.get("p", k) for k in kv.list("p", "")}
    with KvStore(url) as kv:
        assert {k: kv.get("p", k) for k in kv.list("p", "")} == before
        assert "k07" not in before
        assert kv.get("q", "big") == b"\x00" * MAX_VALUE_BYTES


def test_second_open_of_one_directory_refused(tmp_path: Path) -> None:
    url = f"surrealkv://{tmp_path}/kv"
    with KvStore(url) as kv:
        kv.set("p", "k", b"v")
        with pytest.raises(KvUnavailable, match="already open"):
            KvStore(url)
    with KvStore(url) as kv:  # released on close
        assert kv.get("p", "k") == b"v"


WRITER = """
import sys
from astrid_runtime.kv import KvStore
kv = KvStore(sys.argv[1])
i = 0
while True:
    kv.set("writer", f"k{i:06}", i.to_bytes(4, "big") * 64)
    sys.stdout.write(f"{i}\\n")  # acknowledged: set() returned
    sys.stdout.flush()
    i += 1
"""


@pytest.mark.parametrize("trial", range(3))
def test_acknowledged_writes_survive_kill_9(tmp_path: Path, trial: int) -> None:
    url = f"surrealkv://{tmp_path}/kv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    assert writer.stdout is not None
    acknowledged = -1
    try:
        target = 100 + 50 * trial
        for line in writer.stdout:
            acknowledged = int(line)
            if acknowledged >= target:
                break
        writer.send_signal(signal.SIGKILL)
        # Lines already in the pipe were acknowledged before the kill, too.
        for line in writer.stdout:
            acknowledged = int(line)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert acknowledged >= 100
    with KvStore(url) as kv:
        for i in range(acknowledged + 1):
            assert kv.get("writer", f"k{i:06}") == i.to_bytes(4, "big") * 64, i
        keys = kv.list("writer", "", limit=MAX_LIST_LIMIT)
        # At most the one write in flight at the kill is there unacknowledged.
        assert len(keys) in (acknowledged + 1, acknowledged + 2)


def test_list_is_a_range_scan(store: KvStore) -> None:
    """list(prefix) must not scan other plugins' keys (EXPLAIN: "Iterate Range")."""
    from astrid_runtime import kv as kv_module

    for query, params in (
        (kv_module._Q_LIST, {"p": "p", "lo": "a", "hi": "b", "n": 10}),
        (kv_module._Q_LIST_TO_END, {"p": "p", "lo": "", "n": 10}),
    ):
        plan = store._call("explain", query + " EXPLAIN", params)
        assert plan[0]["operation"] == "Iterate Range", plan
