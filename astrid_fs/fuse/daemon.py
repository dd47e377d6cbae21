"""The astrid-fs daemon: serves one overlay over FUSE until unmounted.

Started by `astrid-fs mount` (or by mount.fuse3 through the helper form) as
`python -m astrid_fs.fuse.daemon CONFIG_JSON READY_FD`. It mounts, reports "ok"
(or one error line) on the ready pipe, then serves. It stops when the file
system is unmounted or on SIGTERM/SIGINT/SIGHUP (then it unmounts itself).
While serving it answers JSON-line requests on a control socket:
`{"op": "ping"}`, `{"op": "stats"}` (request counters), `{"op": "invalidate",
"paths": null}`, `{"op": "sync"}` (which also waits, up to `BASE_WAIT_S`, for
the background walk that records the base of mounted sources,
review/remotebase.py, and says what is still pending; not with `"bases":
false`).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import resource
import shutil
import signal
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from astrid_fs.durable import sync_fs
from astrid_fs.fuse.config import DaemonConfig
from astrid_fs.fuse.create_table import ShimCreates
from astrid_fs.fuse.extra_ops import register as register_extra_ops
from astrid_fs.fuse.first_write import FirstWrites
from astrid_fs.fuse.io_uring import DevThreads, IoUring
from astrid_fs.fuse.killpriv import ShimKills
from astrid_fs.fuse.lookup_table import ShimLookups
from astrid_fs.fuse.ops import FuseOps
from astrid_fs.fuse.passthrough import PRIMED_IN_C, Passthrough
from astrid_fs.fuse.replies import drop_kernel_caches
from astrid_fs.fuse.shim import request_read_ahead, shim_version
from astrid_fs.mounttable import MountTable
from astrid_fs.overlay import basecontent, tmpfile, unsynced
from astrid_fs.overlay.copyup import copy_up
from astrid_fs.overlay.files import fd_capacity
from astrid_fs.overlay.layers import Layers, RemoteTree
from astrid_fs.overlay.overlay import Overlay
from astrid_fs.overlay.remote import build_remotes
from astrid_fs.overlay.stack import LowerStack
from astrid_fs.overlay.whiteout import OverlayXattrs
from astrid_fs.review.remotebase import BaseWalker
from astrid_fs.session import MountState, open_session

log = logging.getLogger("astrid_fs.fuse.daemon")


def fuse_options(config: DaemonConfig) -> set[str]:
    opts = {"default_permissions", f"fsname={config.fsname}", "subtype=astrid-fs"}
    if os.geteuid() == 0:
        # Other users (and pjdfstest's uid switching) must reach the mount;
        # the kernel still checks permissions (default_permissions).
        opts |= {"allow_other", "dev", "suid"}
    return opts


#: How long one `sync` request waits for the base walk before it answers
#: "pending" (the client asks again: control.py).
BASE_WAIT_S = 10.0

#: "background": the base walk of mounted sources starts at the mount and
#: lists whenever the session leaves the source alone for a second; default
#: ("on-demand"): when a review verb asks, or once the session has seen
#: `remotebase.MAX_SIGHTS` entries (review/remotebase.py says why).
BASE_WALK_ENV = "ASTRID_FS_BASE_WALK"

#: "0": copy-ups make their unnamed files themselves (overlay/tmpfile.py).
MAKE_AHEAD_ENV = "ASTRID_FS_MAKE_AHEAD"


def _clean_tmp(tmp: Path) -> None:
    """Drop half-built copy-ups a crashed daemon left in the work dir."""
    tmp.mkdir(parents=True, exist_ok=True)
    for entry in tmp.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


class Daemon:
    """One mounted overlay: FUSE loop, control socket, signal handling."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        names = OverlayXattrs(config.xattr_ns)
        remotes: tuple[tuple[bytes, RemoteTree], ...] = ()
        if config.mounts:
            remotes = build_remotes(MountTable.load(Path(config.mounts)),
                                    Path(config.tmp) / "spool")
        stack = None
        if config.stack:
            roots = (os.fsencode(config.lower), *(os.fsencode(s) for s in config.stack))
            stack = LowerStack(roots, names)
        layers = Layers(os.fsencode(config.lower), os.fsencode(config.upper), names,
                        remotes=remotes, stack=stack)
        self.overlay = Overlay(layers, os.fsencode(config.tmp),
                               redirects=config.xattr_ns == "trusted")
        self.ops = FuseOps(self.overlay, lower_ttl=config.lower_ttl)
        self.data_path = "daemon path (passthrough not requested)"
        self.first_writes: FirstWrites | None = None
        self.io_uring: IoUring | None = None
        self.dev_threads: DevThreads | None = None
        self.transport = "/dev/fuse (io_uring not requested)"
        # The base of mounted sources, walked in the background; observing
        # from before the first request (review/remotebase.py).
        root = basecontent.store_for(os.fsencode(config.tmp))
        self.base_walker = BaseWalker.attach(None if root is None else Path(os.fsdecode(root)),
                                             remotes)

    def mount(self) -> None:
        _clean_tmp(Path(self.config.tmp))
        if self.base_walker is not None and os.environ.get(BASE_WALK_ENV) == "background":
            self.base_walker.start()
        self._copy_ups_without_fsync()
        if os.environ.get(MAKE_AHEAD_ENV) != "0":  # (0: for A/B benchmarks)
            # copy-ups take unnamed files made by a thread beforehand, from
            # the first copy-up on
            tmpfile.make_ahead_later(os.fsencode(self.config.tmp))
        # Per-inode fds (no-open I/O) and open files need more than 1024.
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.ops.files.capacity = fd_capacity(hard)
        # LSEEK / FALLOCATE / COPY_FILE_RANGE through the shim (extra_ops.py);
        # kept referenced for as long as the mount lives.
        self.extra_ops = register_extra_ops(self.ops)
        if self.config.passthrough and self.ops.no_open:
            self.ops.passthrough, self.data_path = Passthrough.enable(self.overlay,
                                                                      self.ops.files)
        if self.ops.passthrough is None or shim_version() >= PRIMED_IN_C:
            # (with passthrough, the shim's lookups prime OPENs as the daemon's do)
            self.ops.lookups = ShimLookups.enable(self.overlay, self.ops.name_only_policy,
                                                  self.config.lower_ttl)
        if self.ops.lookups is not None and self.ops.write_table is not None:
            # files made in C (part 22), taken in by every absorb
            self.ops.lookups.creates = ShimCreates.enable(
                self.ops.files, self.ops.cache, passthrough=self.ops.passthrough is not None)
        if self.ops.no_open:  # suid/sgid killed here: no probe per write
            self.ops.kills = ShimKills.enable(passthrough=self.ops.passthrough is not None)
        if self.ops.write_table is not None and self.ops.write_table.drains:
            # a file's first WRITE (its copy-up) and first READ answered in C too
            self.first_writes = FirstWrites.enable(self.overlay, self.ops.files)
        if self.config.io_uring:
            self.io_uring, why = IoUring.enable()
            if self.io_uring is None:
                self.transport = f"/dev/fuse ({why})"
        # where the rings do not run, threads in the shim read /dev/fuse if asked
        self.dev_threads = DevThreads.enable()
        pyfuse3.init(self.ops, self.config.mountpoint, fuse_options(self.config))
        request_read_ahead(self.config.mountpoint)  # 1 MiB, set after INIT (shim.py)

    def _copy_ups_without_fsync(self) -> None:
        """Check what a crash during the last mount may have torn, then arm
        the marker that lets copy-ups skip their fsync (overlay/unsynced.py)."""
        work = os.path.dirname(os.fsencode(self.config.tmp))
        layers = self.overlay.layers
        boot = unsynced.boot_id()
        since = unsynced.crashed(work, boot)
        if since is not None:
            def lower_path(rel: bytes) -> bytes | None:
                return None if layers.remote_for(rel) is not None else layers.lower_path(rel)

            def recopy(lower: bytes, rel: bytes, dest: bytes) -> None:
                copy_up(lower, dest, self.overlay.tmp, layers.names, rel, sync=True)

            checked = unsynced.check_upper(layers.upper, layers.names, since, lower_path,
                                           recopy)
            for rel in checked.restored:
                log.warning("after a crash: %s was a torn copy-up; copied up again",
                            os.fsdecode(rel))
            for rel in checked.suspect:
                log.warning("after a crash: %s was written in the crashed mount; its "
                            "data may be torn (it was never fsync'd)", os.fsdecode(rel))
        try:
            unsynced.arm(work, boot)
        except OSError as e:  # then every copy-up keeps its fsync
            log.warning("cannot arm %s (%s): copy-ups are fsync'd one by one",
                        os.fsdecode(unsynced.marker_path(work)), e)
            return
        self.overlay.sync_copy_up = False

    def unmounted(self) -> None:
        """After a clean unmount: copy-ups durable, the marker gone."""
        basecontent.close_packs()
        tmpfile.stop_ahead(os.fsencode(self.config.tmp))
        if self.base_walker is not None:
            self.base_walker.stop()  # (a point not walked stays pending ...)
            try:
                self.base_walker.save()  # (... and keeps what the session saw)
            except (OSError, sqlite3.Error) as e:
                log.warning("cannot keep what the session saw of its mounted sources: %s", e)
        if self.overlay.sync_copy_up:
            return  # not armed
        try:
            unsynced.disarm(os.path.dirname(os.fsencode(self.config.tmp)),
                            self.overlay.layers.upper)
        except OSError as e:  # the marker stays: the next mount checks the upper
            log.warning("cannot sync the upper at unmount: %s", e)

    def bind_control(self) -> socket.socket | None:
        """The control socket, bound and listening: before the CLI is told the
        mount is ready, so a command run right after `mount` finds it."""
        path = self.config.control
        if not path:
            return None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(16)
        return listener

    async def serve(self, listener: socket.socket | None = None) -> None:
        async with trio.open_nursery() as nursery:
            if listener is not None:
                nursery.start_soon(self._control_server,
                                   trio.socket.from_stdlib_socket(listener))
            nursery.start_soon(self._signals)
            await pyfuse3.main(min_tasks=1, max_tasks=8)
            nursery.cancel_scope.cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                log.info("signal %d: unmounting", signum)
                pyfuse3.terminate()
                return

    async def _control_server(self, sock: trio.socket.SocketType) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await sock.accept()
                nursery.start_soon(self._control_conn, trio.SocketStream(conn))

    async def _control_conn(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
            try:
                reply = await self._control(json.loads(buf))
            except Exception as e:  # one bad request must not stop the daemon
                log.exception("control request failed")
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            try:
                await stream.send_all(json.dumps(reply).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                # The client went away before the reply (killed, timed out):
                # its request was carried out; the mount stays up.
                log.info("control client left before the reply: %s", e)

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.ops.lookups is not None:
            self.ops.lookups.absorb()  # the table whole, as for a FUSE request
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "nodes": len(self.overlay.table)}
        if op == "stats":
            return {"ok": True, "requests": dict(self.ops.requests),
                    "cache_dirs": self.ops.cache_dirs, "nodes": len(self.overlay.table),
                    "fds": self.ops.files.counts(), "data_path": self._data_path(),
                    "shim_writes": None if self.ops.write_table is None
                    else self.ops.write_table.stats(),
                    "shim_lookups": None if self.ops.lookups is None
                    else self.ops.lookups.stats(),
                    "shim_creates": None if self.ops.lookups is None
                    or self.ops.lookups.creates is None
                    else self.ops.lookups.creates.stats(),
                    "killpriv": None if self.ops.kills is None else self.ops.kills.stats(),
                    "first_writes": None if self.first_writes is None
                    else self.first_writes.stats(),
                    "transport": self._transport(),
                    "io_uring": None if self.io_uring is None else self.io_uring.stats(),
                    "dev_threads": None if self.dev_threads is None
                    else self.dev_threads.stats(),
                    "unnamed_ahead": self._unnamed_ahead()}
        if op == "invalidate":
            inodes, entries = self.ops.invalidate_all()
            await trio.to_thread.run_sync(_invalidate_kernel, inodes, entries)
            return {"ok": True, "inodes": len(inodes), "entries": len(entries)}
        if op == "held":
            # Upper files the kernel holds open for passthrough: a commit
            # leaves them in place (passthrough.py).
            held = [] if self.ops.passthrough is None else \
                self.ops.passthrough.held_upper_inodes()
            return {"ok": True, "upper_inodes": held}
        if op == "sync":
            # Nothing is buffered in the daemon (no writeback cache): data is
            # in the upper files once write() returned, and base content in
            # its pack once kept (overlay/basecontent.py, in the work dir on
            # the upper's file system); make it durable. syncfs, not sync:
            # a review verb must not wait for every other file system's
            # dirty pages (a big copy to a slow disk elsewhere).
            await trio.to_thread.run_sync(self._sync_layers)
            if self.base_walker is None or not request.get("bases", True):
                return {"ok": True}  # (status and snapshot: no walk, no wait)
            state = await trio.to_thread.run_sync(self.base_walker.wait, BASE_WAIT_S)
            if state.error is not None:
                return {"ok": False, "error": f"cannot record the session's base of "
                        f"{', '.join(state.pending)}: {state.error}"}
            return {"ok": True, "base_pending": state.pending, "base_entries": state.entries}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _sync_layers(self) -> None:
        """syncfs of the file systems holding the upper and the work dir
        (the session's base-content pack is beside them)."""
        seen = set()
        for path in (self.config.upper, self.config.tmp):
            dev = os.stat(path).st_dev
            if dev not in seen:
                seen.add(dev)
                sync_fs(path)

    def _unnamed_ahead(self) -> dict[str, Any] | None:
        """The made-ahead files' counts; None before the first copy-up (or
        with ASTRID_FS_MAKE_AHEAD=0)."""
        ahead = tmpfile.ahead_for(os.fsencode(self.config.tmp))
        return None if ahead is None else ahead.stats()

    def _transport(self) -> str:
        if self.io_uring is None:
            return self.transport
        if not self.io_uring.active():
            return "/dev/fuse (the kernel did not offer io_uring at INIT)"
        if self.io_uring.stats()["ring_failures"]:
            return "/dev/fuse (a ring could not be set up; see the shim's ring_failures)"
        return "io_uring"

    def _data_path(self) -> dict[str, Any]:
        if self.ops.passthrough is None:
            path = {"data_path": "daemon", "reason": self.data_path}
        else:
            self.ops.passthrough.usable()  # INIT is done once the mount serves
            path = self.ops.passthrough.status()
        return {**path, "transport": self._transport()}


def _invalidate_kernel(inodes: list[int], entries: list[tuple[int, bytes]]) -> None:
    for parent, name in entries:
        try:
            pyfuse3.invalidate_entry(parent, name)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("invalidate_entry(%d, %r): %s", parent, name, e)
    drop_kernel_caches(inodes)


def _report(ready_fd: int | None, line: str) -> None:
    if ready_fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(ready_fd, (line.rstrip("\n") + "\n").encode())
        os.close(ready_fd)


def run(config: DaemonConfig, ready_fd: int | None) -> int:
    """Mount and serve; returns the process exit code."""
    logging.basicConfig(
        filename=None if ready_fd is None else config.log_file,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    session = None
    if config.session:
        session = open_session(config.session, Path(config.astrid_home) if config.astrid_home
                               else None)
    daemon = Daemon(config)
    try:
        daemon.mount()
    except Exception as e:  # reported as one line to the waiting CLI
        log.exception("mount failed")
        _report(ready_fd, f"error: cannot mount {config.mountpoint}: {e}")
        return 1
    try:
        listener = daemon.bind_control()
        if session is not None:
            session.write_mount_state(MountState(os.getpid(), config.mountpoint,
                                                 config.control or ""))
        _report(ready_fd, "ok")
        log.info("serving %s on %s", config.lower, config.mountpoint)
        # What exists now (modules, the libraries' objects) lives as long as
        # the daemon: keep it out of the collector's full passes, which a
        # walk that adds 20,000 inodes would otherwise trigger repeatedly.
        gc.freeze()
        trio.run(daemon.serve, listener)
    finally:
        pyfuse3.close(unmount=True)
        daemon.unmounted()
        if session is not None:
            session.clear_mount_state()
        log.info("unmounted %s", config.mountpoint)
    return 0


def main(argv: list[str]) -> int:
    config = DaemonConfig.from_json(argv[0])
    ready_fd = int(argv[1]) if len(argv) > 1 and argv[1] != "-" else None
    if ready_fd is not None:
        # Detach from the caller's terminal and pipes (mount(8) and scripts
        # wait for EOF on them); logs go to the log file.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
    return run(config, ready_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
