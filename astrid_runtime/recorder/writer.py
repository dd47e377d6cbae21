"""The recording's store in a process of its own: what a recording kernel uses.

Why a process. Recording cost the bus ~18 % of its throughput with the store in
the kernel (docs/benchmarks.md, "The recorded bus", 2026-12-01 19:11 UTC, a
quiet machine, interleaved): half of it the SurrealDB write path — the SDK's
asyncio round trips, the engine's threads, zlib, each taking the GIL or a core
from the guest threads — though its measured CPU was small. In a child
process that work has its own interpreter and threads; the kernel's flush
thread only pickles what it gathered (`chunk.pack`), sends it and waits for
the answer with the GIL released.

Protocol: one socketpair, `multiprocessing.connection` framing, pickle. Both
ends are this module, started by the kernel with the same interpreter, so the
pickles here are trusted (what is read back from the store itself still goes
through the store's restricted unpickler, in the child). Requests
`(op, *args)`: `open(url, max_events, username, password, principal)`,
`write(Packed)`, `read(lo, hi)`, `stats()`, `close()`; answers `("ok", value)`,
`("busy", message)` (`RecordingBusy`) or `("error", message)`
(`RecordingError`). One request at a time (`StoreProcess._lock`).

Crash states. The kernel killed (-9): the child reads on, stores every chunk
the kernel had sent (the socket keeps them), sees end of file, closes the
store and exits: so a kill -9 loses only what the kernel had gathered and not
yet sent, and `durable_seq` (acknowledged writes) stays a lower bound. Its
lock file names the kernel (`principal`), so an opener that finds the lock held
by a writer whose kernel is gone waits for it (store.py `_take_lock`) instead
of calling the recording busy. The child ignores SIGINT (a Ctrl-C at the
terminal reaches the whole process group; the kernel then flushes and closes
the store itself). The child killed: the kernel's next request fails with
`RecordingError` naming it, as a failed store would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from astrid_fs.pyexec import python_module
from astrid_runtime.recorder.chunk import Chunk, RecordingError, Rows, pack
from astrid_runtime.recorder.settings import RecordingSettings
from astrid_runtime.recorder.store import RecordingBusy, RecordingStore, store_target
from astrid_runtime.surreal_exit import leave


class StoreProcess:
    """A `store.Store` whose `RecordingStore` lives in a child process. Blocking and
    thread-safe (one request at a time)."""

    def __init__(self, settings: RecordingSettings, home: Path) -> None:
        url, password = store_target(settings, home)
        self.url = url
        self.max_events = settings.max_events
        self._lock = threading.Lock()
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                python_module("astrid_runtime.recorder.writer", str(theirs.fileno())),
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError as e:
            ours.close()
            raise RecordingError(f"cannot start the recording's writer: {e}") from e
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._closed = False
        try:
            self._last_seq = int(self._call("open", url, settings.max_events,
                                            settings.username, password, os.getpid()))
        except BaseException:
            self._stop()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def last_seq(self) -> int:
        return self._last_seq if self._closed else int(self.stats()["last_seq"])

    def write(self, chunk: Rows) -> None:
        packed = pack(chunk)
        if packed is not None:
            self._call("write", packed)

    def read(self, lo: int = 0, hi: int = 2**62) -> Chunk:
        chunk = self._call("read", lo, hi)
        assert isinstance(chunk, Chunk)
        return chunk

    def stats(self) -> dict[str, int]:
        stats = self._call("stats")
        assert isinstance(stats, dict)
        return stats

    def close(self) -> None:
        """Close the store and wait for the child to exit. A writer already gone is not
        an error here: its last write said so, and what it acknowledged is stored."""
        with self._lock:
            if self._closed:
                return
        try:
            self._last_seq = int(self.stats()["last_seq"])
            self._call("close")
        except RecordingError:
            if self._proc.poll() is None:
                raise
        finally:
            self._stop()

    def _call(self, op: str, *args: Any) -> Any:
        with self._lock:
            if self._closed:
                raise RecordingError(f"the recording {self.url} is closed")
            try:
                self._conn.send((op, *args))
                kind, value = self._conn.recv()
            except (EOFError, OSError) as e:
                try:
                    code: int | None = self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    code = None
                why = ("it does not answer" if code is None else
                       f"killed by signal {-code}" if code < 0 else f"it exited with {code}")
                raise RecordingError(f"the recording's writer (pid {self._proc.pid}) is gone "
                                     f"({why}): {type(e).__name__}") from None
        if kind == "ok":
            return value
        if kind == "busy":
            raise RecordingBusy(value)
        raise RecordingError(value)

    def _stop(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()  # the child sees end of file and exits
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def serve(conn: Connection) -> None:
    """The child's loop: answer requests until `close` or end of file."""
    store: RecordingStore | None = None
    try:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return  # the kernel is gone: everything it sent is written
            op, *args = request
            try:
                if op == "open":
                    url, max_events, username, password, principal = args
                    store = RecordingStore(url, max_events=max_events, username=username,
                                           password=password, principal=principal)
                    answer: Any = ("ok", store.last_seq())
                elif store is None:
                    answer = ("error", f"the recording is not open (asked to {op})")
                elif op == "write":
                    store.write_packed(args[0])
                    answer = ("ok", None)
                elif op == "read":
                    answer = ("ok", store.read(*args))
                elif op == "stats":
                    answer = ("ok", store.stats())
                elif op == "close":
                    store.close()
                    answer = ("ok", None)
                else:
                    answer = ("error", f"the recording's writer has no op {op!r}")
            except RecordingBusy as e:
                answer = ("busy", str(e))
            except RecordingError as e:
                answer = ("error", str(e))
            except Exception as e:  # a bug here must reach the kernel as one line
                answer = ("error", f"the recording's writer: {type(e).__name__}: {e}")
            with contextlib.suppress(OSError):  # the kernel died after asking: go on
                conn.send(answer)
            if op == "close" and answer[0] == "ok":
                return
    finally:
        if store is not None:
            store.close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the kernel closes us (module docstring)
    serve(Connection(int(sys.argv[1])))
    leave(0)  # everything is written and the store closed by now (surreal_exit.py)


if __name__ == "__main__":
    main()
