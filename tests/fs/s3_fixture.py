"""A real S3-compatible server (npm `s3rver`) on 127.0.0.1, started by
fixtures and stopped by PID.

s3rver is installed by scripts/setup.d/40-s3.sh into tests/.s3rver/. On
Node 20 it needs NODE_OPTIONS=--openssl-legacy-provider, or listings past
1,000 keys fail (FIELD-NOTES). It accepts any secret for its access key
id `S3RVER` and answers 403 for any other key id, which the tests use.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import obstore
import pytest
from obstore.store import S3Store

from astrid_fs.drivers.s3 import S3Driver, S3Options
from tests.support.servers import LogLines, wait_ready

ROOT = Path(__file__).resolve().parents[2]
S3RVER = ROOT / "tests" / ".s3rver" / "node_modules" / ".bin" / "s3rver"
BUCKET = "astrid-test"
ACCESS_KEY = "S3RVER"
READY_TIMEOUT = 30.0
LOG_WAIT_S = 10.0  # a bound, not a pause: a wait on the log ends when its line arrives
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class S3Server:
    """One s3rver process serving `buckets` from `data_dir`."""

    def __init__(self, data_dir: Path, buckets: tuple[str, ...] = (BUCKET,),
                 port: int | None = None, quiet: bool = False) -> None:
        self.data_dir = data_dir
        self.buckets = buckets
        self.port = port or free_port()
        self.quiet = quiet
        self.process: subprocess.Popen[str] | None = None
        self.log = LogLines()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start s3rver; return once it says it listens and the port accepts."""
        if not S3RVER.exists():
            raise RuntimeError(f"{S3RVER} missing: run bash scripts/setup.d/40-s3.sh")
        assert shutil.which("node"), "node is not installed"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(S3RVER), "-d", str(self.data_dir), "-a", "127.0.0.1", "-p", str(self.port)]
        if self.quiet:
            cmd.append("--silent")
        for bucket in self.buckets:
            cmd += ["--configure-bucket", bucket]
        env = {**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"}
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, env=env)
        self.process = process
        assert process.stdout is not None
        status = wait_ready(process.stdout, self.log, "listening on", f"s3rver-{self.port}",
                            READY_TIMEOUT)
        if status == "timeout":
            self.stop()
            raise RuntimeError("s3rver did not start in time")
        if status == "exited":
            raise RuntimeError("s3rver exited: " + "".join(self.log)[-2000:])
        with socket.create_connection(("127.0.0.1", self.port), timeout=READY_TIMEOUT):
            pass

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, never answered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL by PID (a crash mid-request)."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)
            self.process = None

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None:
            return
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def count(self, pattern: str) -> int:
        """How many log lines match `pattern` (s3rver logs one line per request)."""
        rx = re.compile(pattern)
        return sum(1 for line in list(self.log) if rx.search(line))


def s3_mount_table(directory: Path, source: str, endpoint: str, extra: str = "") -> Path:
    """A mounts.toml in `directory` with `source` at /mnt/s3 (`extra`: more
    lines of the entry)."""
    path = directory / "mounts.toml"
    path.write_text(f'[[mount]]\npath = "/mnt/s3"\nsource = "{source}"\n'
                    f'endpoint = "{endpoint}"\nregion = "us-east-1"\n{extra}')
    return path


def s3_env(home: Path, secret: str = "any-secret") -> dict[str, str]:
    """An environment with only what the AWS chain should see (no ~/.aws of the host)."""
    return {"HOME": str(home), "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret}


class S3Target:
    """A server plus a fresh key prefix per test, and a factory for drivers on it."""

    _ids = itertools.count()

    def __init__(self, server: S3Server, home: Path) -> None:
        self.server = server
        self.home = home
        self.prefix = f"t{next(self._ids)}-{os.getpid()}"
        self.drivers: list[S3Driver] = []
        self._sentinel = False

    @property
    def source(self) -> str:
        return f"s3://{BUCKET}/{self.prefix}"

    def options(self, **overrides: object) -> S3Options:
        base: dict[str, object] = {"endpoint": self.server.endpoint, "region": "us-east-1",
                                   "timeout_s": 10.0, "retry_deadline_s": 3.0, "retries": 2}
        base.update(overrides)
        return S3Options(**base)  # type: ignore[arg-type]

    def driver(self, source: str | None = None, env: dict[str, str] | None = None,
               **overrides: object) -> S3Driver:
        drv = S3Driver(source or self.source, self.options(**overrides),
                       env=env if env is not None else s3_env(self.home))
        self.drivers.append(drv)
        return drv

    def store(self) -> S3Store:
        """An independent obstore client on this prefix ("someone else" writing)."""
        return S3Store(BUCKET, prefix=self.prefix, endpoint=self.server.endpoint,
                       region="us-east-1", access_key_id=ACCESS_KEY,
                       secret_access_key="other-writer", client_options={"allow_http": True})

    def put(self, key: str, body: bytes) -> str:
        """Write an object behind the driver's back; returns its ETag."""
        etag = obstore.put(self.store(), key, body)["e_tag"]
        assert etag is not None
        return etag

    def put_many(self, keys: list[str], body: bytes = b"x") -> None:
        store = self.store()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: obstore.put(store, k, body), keys))

    def get(self, key: str) -> bytes:
        return bytes(obstore.get(self.store(), key).bytes())

    def keys(self) -> list[str]:
        return sorted(m["path"] for m in obstore.list(self.store(), None).collect())

    # ---- the server's log (s3rver writes a line per request it answered) ----

    def lines_for(self, key: str, since: int = 0) -> list[str]:
        """The log's lines for requests of `key`, from line `since` on."""
        rx = re.compile(re.escape(f"{self.prefix}/{key}") + r" ")
        return [line for line in list(self.server.log)[since:] if rx.search(line)]

    def listings_of(self, directory: str, since: int = 0) -> int:
        """LISTs of `directory`'s entries (with the delimiter: a directory
        listing, not the one-key probe that tells a directory from a missing
        name), from line `since` on; `directory` ends in "/" ("" for the root)."""
        rx = re.compile(r'Fetched bucket .*"delimiter":"/".*"prefix":"'
                        + re.escape(f"{self.prefix}/{directory}") + '"')
        return sum(1 for line in list(self.server.log)[since:] if rx.search(line))

    def settle_log(self) -> int:
        """Return once every request made so far is in the log (and the log's
        length then): s3rver logs a request when its response is done, in
        order, and a pump thread appends the lines; a GET of a 1-byte
        sentinel object made now is logged after all of them."""

        def sentinel_gets(lines: list[str]) -> int:
            rx = re.compile(re.escape(f"{self.prefix}/sentinel") + r" ")
            return sum(1 for line in lines if rx.search(line) and " 1b" in line)

        if not self._sentinel:
            self.put("sentinel", b"s")
            self._sentinel = True
        gets = sentinel_gets(list(self.server.log))
        self.get("sentinel")
        assert self.server.log.wait_until(lambda lines: sentinel_gets(lines) > gets,
                                          LOG_WAIT_S), "s3rver never logged the sentinel GET"
        return len(self.server.log)

    def mount_table(self, directory: Path) -> Path:
        """A mounts.toml in `directory` with this target at /mnt/s3."""
        return s3_mount_table(directory, self.source, self.server.endpoint)

    def close(self) -> None:
        for drv in self.drivers:
            drv.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One s3rver for the whole run (tests use separate key prefixes)."""
    server = S3Server(tmp_path_factory.mktemp("s3rver"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server, tmp_path: Path) -> Iterator[S3Target]:
    """A fresh prefix on the shared server, drivers closed afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    target = S3Target(s3_server, home)
    try:
        yield target
    finally:
        target.close()


@pytest.fixture
def own_s3_server(tmp_path: Path) -> Iterator[S3Server]:
    """A private s3rver a test may pause or kill."""
    server = S3Server(tmp_path / "own-s3rver")
    server.start()
    try:
        yield server
    finally:
        server.stop()
