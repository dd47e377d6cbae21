"""The kernel's key-value store: one keyspace per plugin, kept in SurrealDB.

What it promises
----------------
* ``get`` / ``set`` / ``delete`` / ``list(prefix)`` over ``bytes`` values, each
  plugin confined to its own keyspace by the kernel (SurrealDB's table
  PERMISSIONS do not bind the embedded root session, so isolation cannot be
  delegated to the database).
* Blocking and thread-safe. The kernel calls it from worker threads
  (``trio.to_thread.run_sync`` with an explicit limiter); never call it from the
  trio loop itself. ``AsyncSurreal`` needs an asyncio loop and fails under trio,
  so the SDK's blocking client is used.
* Durable: a ``set`` that returned survives ``close()`` + reopen and a
  ``kill -9`` of the writing process (see ``tests/runtime/test_kv.py``).

Storage layout
--------------
One table, ``kv``, whose record ids are two-element arrays ``[plugin, key]``
and whose single field ``v`` holds the value as SurrealDB ``bytes`` (CBOR byte
strings round-trip exactly, NUL bytes included). Array ids keep a plugin's
keys contiguous and ordered in the underlying key-value engine, so
``list(prefix)`` is one range scan (``kv:[$p, $lo]..[$p, $hi]``; EXPLAIN says
"Iterate Range"), not a table scan. Plugin names and keys reach SurrealDB only
as bound parameters (``RecordID`` values) — the SurrealQL text is constant —
so no key can change a statement, whatever quotes, backticks, ``⟩`` or ``;``
it holds.

Limits (checked here, before the database sees anything)
--------------------------------------------------------
* plugin name: non-empty, at most ``MAX_PLUGIN_BYTES`` UTF-8 bytes;
* key and prefix: at most ``MAX_KEY_BYTES`` UTF-8 bytes; the empty key is a
  valid key;
* plugin, key, prefix: no NUL character (SurrealDB's key encoding refuses
  strings holding NUL) and no lone surrogates (not encodable as UTF-8);
* value: at most ``MAX_VALUE_BYTES`` bytes;
* ``list`` returns at most ``limit`` keys, ``1 <= limit <= MAX_LIST_LIMIT``.

Key order is Unicode code-point order, the same as Python's ``sorted`` on
``str`` (SurrealDB orders strings by their UTF-8 bytes, which agrees).

Durability
----------
The embedded engine fsyncs each commit only when ``SURREAL_SYNC_DATA=true`` is
in the environment when the engine first reads its configuration (once per
process). ``KvStore`` sets it before it starts any embedded engine; a process
that starts a SurrealDB engine some other way before the first ``KvStore``
must set it itself. Without it a ``kill -9`` still loses nothing (the page
cache survives the process), but a power loss could.

Thread safety and locking
-------------------------
The SDK's embedded connection takes no lock of its own and mutates shared
state per request (``self.id``); the WebSocket one locks only its socket. A
``KvStore`` therefore holds ONE connection and serialises every call through
one ``threading.Lock`` (a per-thread connection is not possible: two engines
on one ``surrealkv://`` directory would both write it). A persistent store
also takes an exclusive ``flock`` on ``<path>.lock`` so that a second store on
the same directory, in this process or another, fails with ``KvUnavailable``
instead of corrupting it; the lock dies with the process, so a killed kernel
does not block its successor.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

from surrealdb import BlockingEmbeddedSurrealConnection, RecordID, Surreal

from astrid_runtime.errors import KernelError, Refusal

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_LIST_LIMIT",
    "MAX_PLUGIN_BYTES",
    "MAX_VALUE_BYTES",
    "KvClosed",
    "KvError",
    "KvInvalid",
    "KvInvalidKey",
    "KvStore",
    "KvTooLarge",
    "KvUnavailable",
    "default_url",
]

MAX_PLUGIN_BYTES: Final = 128
MAX_KEY_BYTES: Final = 1024
# 1 MiB: a set of this size takes ~15 ms in the embedded engine here, and the
# Host ABI copies list<u8> on every call; bigger blobs belong in the VFS.
MAX_VALUE_BYTES: Final = 1 << 20
MAX_LIST_LIMIT: Final = 10_000

_TABLE: Final = "kv"
_EMBEDDED_PERSISTENT: Final = ("surrealkv", "surrealkv+versioned", "file")
_EMBEDDED_MEMORY: Final = ("mem", "memory")
_REMOTE: Final = ("ws", "wss", "http", "https")

# Constant statement texts: values travel only as bound parameters.
_Q_GET: Final = "SELECT VALUE v FROM ONLY $r"
_Q_SET: Final = "UPSERT $r CONTENT { v: $v } RETURN NONE"
# `RETURN id` yields one row per deleted record and none when nothing existed,
# without shipping the deleted value back.
_Q_DELETE: Final = "DELETE $r RETURN id"
# `id[1]` returns the key strings themselves: half the time of decoding RecordIDs
# in the SDK's pure-Python CBOR decoder.
_Q_LIST: Final = "SELECT VALUE id[1] FROM kv:[$p, $lo]..[$p, $hi] LIMIT $n"
# No string is the successor of every string starting with the prefix (the
# empty prefix, or one of only U+10FFFF): bound the scan with `{}` instead —
# SurrealDB orders every object after every string, so [p, {}] ends p's keys.
_Q_LIST_TO_END: Final = "SELECT VALUE id[1] FROM kv:[$p, $lo]..[$p, {}] LIMIT $n"

_T = TypeVar("_T")


class KvError(KernelError):
    """A KV operation failed; the message says which plugin, key and why.

    ``kind`` names the ``astrid:kernel/types.error`` case the ABI returns for it.
    """

    kind: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KvInvalid(KvError, Refusal):
    """A malformed argument (bad limit, wrong type); the plugin can fix it."""

    def __init__(self, message: str) -> None:
        Refusal.__init__(self, "invalid", message)


class KvInvalidKey(KvInvalid):
    """A plugin name, key or prefix that the store cannot hold (empty name, NUL)."""


class KvTooLarge(KvError, Refusal):
    """A key, plugin name or value over its documented limit."""

    def __init__(self, message: str) -> None:
        Refusal.__init__(self, "too-large", message)


class KvUnavailable(KvError):
    """The database cannot be opened or reached now (locked, down, bad URL)."""

    kind = "unavailable"


class KvClosed(KvUnavailable):
    """The store was closed; open a new one."""


def default_url(astrid_home: Path | None = None) -> str:
    """The persistent default: ``surrealkv://$ASTRID_HOME/kv``.

    ``astrid_home`` defaults to ``$ASTRID_HOME``, else ``~/.local/share/astrid``.
    """
    if astrid_home is None:
        env_home = os.environ.get("ASTRID_HOME")
        astrid_home = Path(env_home) if env_home else Path.home() / ".local" / "share" / "astrid"
    return f"surrealkv://{astrid_home.expanduser().absolute() / 'kv'}"


def _scheme_and_rest(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise KvUnavailable(
            f"KV URL {url!r} has no scheme; use surrealkv://PATH, mem:// or ws://HOST:PORT"
        )
    return scheme.lower(), rest


def _check_text(what: str, text: object, max_bytes: int, *, allow_empty: bool) -> None:
    if not isinstance(text, str):
        raise KvInvalidKey(f"{what} must be a string, not {type(text).__name__}")
    if not text and not allow_empty:
        raise KvInvalidKey(f"{what} must not be empty")
    if "\x00" in text:
        raise KvInvalidKey(f"{what} {text!r} holds a NUL character, which the store refuses")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise KvInvalidKey(f"{what} {text!r} is not valid Unicode text ({exc.reason})") from None
    if size > max_bytes:
        raise KvTooLarge(f"{what} is {size} bytes of UTF-8; the limit is {max_bytes}")


def _prefix_successor(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix``.

    None when there is none (empty prefix, or only U+10FFFF characters).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last == 0x10FFFF:
            continue
        nxt = last + 1
        if 0xD800 <= nxt <= 0xDFFF:  # surrogates are not encodable: skip them
            nxt = 0xE000
        return "".join(chars) + chr(nxt)
    return None


class KvStore:
    """A per-plugin key-value store on SurrealDB. Blocking; safe to share across threads.

    ``url``: ``surrealkv://PATH`` (embedded, persistent, fsync per commit),
    ``mem://`` (embedded, in memory, for tests) or ``ws://HOST:PORT`` /
    ``wss://`` / ``http(s)://`` (a shared server; pass ``username`` and
    ``password`` to sign in as a root or namespace user).
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "astrid",
        database: str = "kernel",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._closed = False
        self._lock_fd: int | None = None
        scheme, rest = _scheme_and_rest(url)
        if scheme not in _EMBEDDED_PERSISTENT + _EMBEDDED_MEMORY + _REMOTE:
            raise KvUnavailable(
                f"KV URL {url!r}: unsupported scheme {scheme!r}; "
                "use surrealkv://PATH, mem:// or ws://HOST:PORT"
            )
        if scheme in _EMBEDDED_PERSISTENT + _EMBEDDED_MEMORY:
            # Read by the engine once per process, at its first start: set it first.
            os.environ["SURREAL_SYNC_DATA"] = "true"
        if scheme in _EMBEDDED_PERSISTENT:
            self._lock_fd = self._take_directory_lock(url, rest)
        try:
            self._db = self._connect(url, namespace, database, username, password)
        except BaseException:
            self._release_directory_lock()
            raise

    @classmethod
    def open_default(cls, astrid_home: Path | None = None) -> KvStore:
        """Open the persistent default store ``surrealkv://$ASTRID_HOME/kv``."""
        return cls(default_url(astrid_home))

    # -- the four operations -------------------------------------------------

    def get(self, plugin: str, key: str) -> bytes | None:
        """The value stored at ``key`` in ``plugin``'s keyspace, or None."""
        record = self._record(plugin, key)
        found = self._call(f"get {plugin}/{key!r}", _Q_GET, {"r": record})
        if found is None:
            return None
        if not isinstance(found, bytes):
            raise KvError(
                f"get {plugin}/{key!r}: stored value is {type(found).__name__}, not bytes "
                "(written by something other than astrid_runtime.kv)"
            )
        return found

    def set(self, plugin: str, key: str, value: bytes | bytearray | memoryview) -> None:
        """Store ``value`` at ``key``, replacing any value; durable when this returns."""
        record = self._record(plugin, key)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise KvInvalid(
                f"set {plugin}/{key!r}: value must be bytes, not {type(value).__name__}"
            )
        blob = bytes(value)
        if len(blob) > MAX_VALUE_BYTES:
            raise KvTooLarge(
                f"set {plugin}/{key!r}: value is {len(blob)} bytes; the limit is {MAX_VALUE_BYTES}"
            )
        self._call(f"set {plugin}/{key!r}", _Q_SET, {"r": record, "v": blob})

    def delete(self, plugin: str, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        record = self._record(plugin, key)
        rows = self._call(f"delete {plugin}/{key!r}", _Q_DELETE, {"r": record})
        return bool(rows)

    def list(self, plugin: str, prefix: str = "", limit: int = 1000) -> list[str]:
        """The first ``limit`` keys of ``plugin`` that start with ``prefix``, sorted."""
        _check_text("plugin name", plugin, MAX_PLUGIN_BYTES, allow_empty=False)
        _check_text("prefix", prefix, MAX_KEY_BYTES, allow_empty=True)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not (1 <= limit <= MAX_LIST_LIMIT)
        ):
            raise KvInvalid(f"list limit must be an integer in 1..{MAX_LIST_LIMIT}, not {limit!r}")
        upper = _prefix_successor(prefix)
        params: dict[str, Any] = {"p": plugin, "lo": prefix, "n": limit}
        if upper is None:
            rows = self._call(f"list {plugin}/{prefix!r}", _Q_LIST_TO_END, params)
        else:
            rows = self._call(f"list {plugin}/{prefix!r}", _Q_LIST, {**params, "hi": upper})
        keys = [self._key_of(row) for row in rows or ()]
        # The range scan already yields key order; sorting again is cheap
        # insurance for remote servers and keeps the promise in one place.
        keys.sort()
        return keys

    # -- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Close the database and release the directory lock. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.close()
            except Exception as exc:  # the engine is going away either way
                raise KvError(f"closing KV store {self._url}: {exc}") from exc
            finally:
                self._release_directory_lock()

    def __enter__(self) -> KvStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"KvStore({self._url!r}, {state})"

    # -- internals ---------------------------------------------------------------

    @staticmethod
    def _record(plugin: str, key: str) -> Any:
        _check_text("plugin name", plugin, MAX_PLUGIN_BYTES, allow_empty=False)
        _check_text("key", key, MAX_KEY_BYTES, allow_empty=True)
        return RecordID(_TABLE, [plugin, key])

    @staticmethod
    def _key_of(row: Any) -> str:
        if isinstance(row, str):
            return row
        raise KvError(f"unexpected record id in table {_TABLE}: {row!r}")

    def _call(self, what: str, query: str, params: Mapping[str, Any]) -> Any:
        return self._locked(what, lambda: self._db.query(query, dict(params)))

    def _locked(self, what: str, fn: Callable[[], _T]) -> _T:
        with self._lock:
            if self._closed:
                raise KvClosed(f"{what}: the KV store {self._url} is closed")
            try:
                return fn()
            except KvError:
                raise
            except (ConnectionError, TimeoutError, OSError) as exc:
                raise KvUnavailable(f"{what}: KV store {self._url} unreachable: {exc}") from exc
            except Exception as exc:
                # The SDK reports engine errors as RuntimeError or SurrealError
                # subclasses; the ABI layer only needs "it failed, and why".
                kind = type(exc).__name__
                if "Connection" in kind or "Unavailable" in kind:
                    raise KvUnavailable(f"{what}: KV store {self._url}: {exc}") from exc
                raise KvError(f"{what}: {kind}: {exc}") from exc

    @staticmethod
    def _connect(
        url: str,
        namespace: str,
        database: str,
        username: str | None,
        password: str | None,
    ) -> Any:
        try:
            db = Surreal(url)
            if isinstance(db, BlockingEmbeddedSurrealConnection):
                db.connect()  # remote clients connect on first use
            if username is not None or password is not None:
                db.signin({"username": username or "", "password": password or ""})
            db.use(namespace, database)
            # Touch the datastore now, so a bad path or server fails the open,
            # not the first plugin call.
            db.query("INFO FOR DB")
        except Exception as exc:
            raise KvUnavailable(f"cannot open KV store {url}: {exc}") from exc
        return db

    @staticmethod
    def _take_directory_lock(url: str, rest: str) -> int:
        path = Path(rest).expanduser()
        lock_path = path.with_name(path.name + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise KvUnavailable(f"cannot open KV store {url}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise KvUnavailable(
                f"KV store {url} is already open (another kernel holds {lock_path})"
            ) from None
        return fd

    def _release_directory_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the only descriptor drops the flock
            self._lock_fd = None
