"""The `s3` driver: a bucket prefix as a lower tree, through obstore's sync API.

Why obstore's synchronous API: measured fastest here from worker threads
(FIELD-NOTES), and it keeps its own Tokio runtime out of the trio loop.
Every call below blocks; the FUSE adapter calls the driver from threads.

Mapping: `s3://bucket/prefix` is the root. Keys split on '/': a common
prefix (delimiter '/') is a directory, an object is a file whose size,
mtime (Last-Modified) and ETag come from the listing, with no HEAD per
object. A directory exists only while some key is under it (S3 has no empty
directories: `make_dir` is a no-op, see `capabilities`). A name that is both
an object and a prefix shows as the directory. A symlink is stored as rclone
stores it with `--links`: an object `NAME.rclonelink` whose body is the
target, shown as the symlink NAME (a real object NAME wins over it).

Reads: ranged GETs through `ReadAheadReader`, pinned to the ETag seen at
open; an object replaced under an open reader raises `Stale`. Write-back:
PUT (multipart above `multipart_threshold_mib`), DELETE (bulk), rename as
copy + delete. Every request has a connect timeout and a total timeout;
obstore's own retries are off so that `RetryPolicy` is the one place that
retries. Credentials: `aws_config.resolve` (the standard chain); they never
appear in messages, logs or `repr`.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import obstore
from obstore.store import S3Store

from astrid_fs.drivers import aws_config
from astrid_fs.drivers.base import (
    Capabilities,
    DriverSpec,
    EntryStat,
    Options,
    Reader,
    check_rel,
    join_rel,
    mode_for,
    synthetic_ino,
)
from astrid_fs.drivers.errors import (
    ConfigError,
    DriverError,
    InvalidPath,
    IsADirectory,
    NotADirectory,
    NotFound,
    NotSupported,
    Stale,
)
from astrid_fs.drivers.readahead import MIB, Fetch, ReadAheadConfig, ReadAheadReader
from astrid_fs.drivers.retry import NO_RETRY, RetryPolicy
from astrid_fs.drivers.s3_errors import reason_of, translate
from astrid_fs.drivers.s3_options import OPTION_TYPES, S3Options, parse_source

__all__ = ["LINK_SUFFIX", "SPEC", "S3Driver", "S3Options", "parse_source", "translate"]

if TYPE_CHECKING:
    from obstore import ObjectMeta

T = TypeVar("T")

# S3 DeleteObjects takes at most 1,000 keys per request.
_DELETE_BATCH = 1000
LINK_SUFFIX = ".rclonelink"  # rclone's `--links` convention for symlinks on object stores


def _mtime_ns(meta: ObjectMeta) -> int:
    return int(meta["last_modified"].timestamp()) * 1_000_000_000 + \
        meta["last_modified"].microsecond * 1000


class S3Driver:
    """One `s3://bucket/prefix` source. Thread-safe; opens no connection until used."""

    def __init__(self, source: str, options: S3Options | None = None,
                 env: dict[str, str] | None = None) -> None:
        self._source = source
        self.bucket, self.prefix = parse_source(source)
        self.options = options or S3Options()
        o = self.options
        self.settings = aws_config.resolve(profile=o.profile, region=o.region,
                                           endpoint=o.endpoint, anonymous=o.anonymous, env=env)
        self.retry = RetryPolicy(attempts=o.retries + 1, deadline_s=o.retry_deadline_s)
        self._store = self._make_store()
        self._executor: cf.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._dir_mtime_ns = time.time_ns()
        self._readahead = ReadAheadConfig(
            max_window=o.read_window_mib * MIB, depth=o.read_depth,
            max_buffer=max(64 * MIB, 2 * o.read_depth * o.read_window_mib * MIB),
            wait_timeout_s=o.timeout_s + o.retry_deadline_s)

    def _make_store(self) -> S3Store:
        s, o = self.settings, self.options
        config: dict[str, Any] = {"region": s.region,
                                  "virtual_hosted_style_request": o.virtual_hosted}
        if s.endpoint:
            config["endpoint"] = s.endpoint
        if self.settings.credential_source.startswith("anonymous"):
            config["skip_signature"] = True
        if s.access_key_id and s.secret_access_key:
            config["access_key_id"] = s.access_key_id
            config["secret_access_key"] = s.secret_access_key
            if s.session_token:
                config["token"] = s.session_token
        client: dict[str, Any] = {
            "allow_http": bool(s.endpoint and s.endpoint.startswith("http://")),
            "connect_timeout": dt.timedelta(seconds=o.connect_timeout_s),
            "timeout": dt.timedelta(seconds=o.timeout_s),
        }
        try:
            return S3Store(self.bucket, prefix=self.prefix or None, config=config,  # type: ignore[arg-type]
                           client_options=client,  # type: ignore[arg-type]
                           retry_config={"max_retries": 0})
        except Exception as e:  # obstore raises its config errors untyped
            raise ConfigError(f"{self._source}: {reason_of(str(e))}") from None

    # ---- properties ----------------------------------------------------------------

    @property
    def source(self) -> str:
        return self._source

    @property
    def is_remote(self) -> bool:
        return True

    @property
    def local_root(self) -> Path | None:
        return None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(symlinks=True, modes=False, empty_dirs=False, atomic_rename=False)

    def __repr__(self) -> str:
        return f"S3Driver({self._source!r}, endpoint={self.settings.endpoint!r})"

    # ---- plumbing --------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T], policy: RetryPolicy | None = None) -> T:
        """Run one obstore call: translate its errors, retry the temporary ones."""
        label = f"{self._source}: {what}"

        def once() -> T:
            try:
                return fn()
            except DriverError:
                raise
            except Exception as e:
                raise translate(e, label) from None

        return (policy or self.retry).call(once, label)

    def _pool(self) -> cf.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = cf.ThreadPoolExecutor(
                    self.options.threads, thread_name_prefix=f"s3-{self.bucket}")
            return self._executor

    def _file_stat(self, rel: str, meta: ObjectMeta) -> EntryStat:
        return EntryStat("file", meta["size"], _mtime_ns(meta),
                         mode_for("file", self.options.file_mode),
                         synthetic_ino(self._source, rel), meta["e_tag"])

    def _link_stat(self, rel: str, meta: ObjectMeta) -> EntryStat:
        return EntryStat("symlink", meta["size"], _mtime_ns(meta), mode_for("symlink", 0o777),
                         synthetic_ino(self._source, rel), meta["e_tag"])

    def _dir_stat(self, rel: str) -> EntryStat:
        return EntryStat("dir", 0, self._dir_mtime_ns, mode_for("dir", self.options.dir_mode),
                         synthetic_ino(self._source, rel), None)

    def _head(self, rel: str) -> ObjectMeta | None:
        try:
            return self._call(f"stat {rel}", lambda: obstore.head(self._store, rel))
        except NotFound:
            return None

    def _has_children(self, rel: str, policy: RetryPolicy | None = None) -> bool:
        def first_page() -> bool:
            stream = obstore.list(self._store, rel or None, chunk_size=1)
            return next(iter(stream), None) is not None
        return self._call(f"list {rel or '/'}", first_page, policy)

    def _keys_under(self, rel: str) -> list[str]:
        def collect() -> list[str]:
            return [m["path"] for m in obstore.list(self._store, rel or None,
                                                    chunk_size=1000).collect()]
        return self._call(f"list {rel or '/'}", collect)

    # ---- reads -----------------------------------------------------------------------------

    def check(self) -> None:
        """One LIST of the root, no retries: a missing bucket, a refused
        connection or a 403 fails here in one line."""
        try:
            self._has_children("", NO_RETRY)
        except DriverError as e:
            endpoint = self.settings.endpoint or "AWS"
            e.args = (f"{e} [endpoint {endpoint}, region {self.settings.region}, "
                      f"credentials: {self.settings.credential_source}]",)
            raise

    def stat(self, rel: str) -> EntryStat | None:
        check_rel(rel)
        if rel == "":
            return self._dir_stat("")
        meta = self._head(rel)
        if meta is not None:
            return self._file_stat(rel, meta)
        if self._has_children(rel):
            return self._dir_stat(rel)
        link = self._head(rel + LINK_SUFFIX)
        return None if link is None else self._link_stat(rel, link)

    def list_dir(self, rel: str) -> list[tuple[str, EntryStat]]:
        check_rel(rel)
        result = self._call(f"list {rel or '/'}",
                            lambda: obstore.list_with_delimiter(self._store, rel or None))
        entries: dict[str, EntryStat] = {}
        for prefix in result["common_prefixes"]:
            name = prefix.rstrip("/").rpartition("/")[2]
            if name:
                entries[name] = self._dir_stat(join_rel(rel, name))
        links = []
        for meta in result["objects"]:
            name = meta["path"].rpartition("/")[2]
            if name.endswith(LINK_SUFFIX) and len(name) > len(LINK_SUFFIX):
                links.append((name[:-len(LINK_SUFFIX)], meta))
            elif name and name not in entries and meta["path"] != rel:
                entries[name] = self._file_stat(join_rel(rel, name), meta)
        for name, meta in links:
            if name not in entries:
                entries[name] = self._link_stat(join_rel(rel, name), meta)
        if not entries and rel:
            if self._head(rel) is not None:
                raise NotADirectory(f"{self._source}: {rel} is a file")
            raise NotFound(f"{self._source}: {rel}: no such directory")
        return sorted(entries.items())

    def open_reader(self, rel: str, expect: EntryStat | None = None) -> Reader:
        check_rel(rel)
        if expect is None or expect.kind != "file":
            meta = self._head(rel)
            if meta is None:
                if rel == "" or self._has_children(rel):
                    raise IsADirectory(f"{self._source}: {rel or '/'} is a directory")
                raise NotFound(f"{self._source}: {rel}: not found")
            size, etag = meta["size"], meta["e_tag"]
        else:
            size, etag = expect.size, expect.etag
        return ReadAheadReader(self._range_fetcher(rel, etag), size, self._pool(),
                               self._readahead)

    def _range_fetcher(self, rel: str, etag: str | None) -> Fetch:
        pinned = [etag]

        def get(start: int, end: int) -> memoryview:
            result = obstore.get(self._store, rel, options={"range": (start, end)})
            seen = result.meta["e_tag"]
            if pinned[0] is None:
                pinned[0] = seen
            elif seen is not None and seen != pinned[0]:
                raise Stale(f"{self._source}: {rel} changed on the server while open")
            return memoryview(result.bytes())  # no copy: the reader slices it

        def fetch(start: int, end: int) -> memoryview:
            return self._call(f"read {rel} bytes {start}-{end}", lambda: get(start, end))
        return fetch

    def readlink(self, rel: str) -> str:
        check_rel(rel)
        key = rel + LINK_SUFFIX
        try:
            body = self._call(f"readlink {rel}",
                              lambda: bytes(obstore.get(self._store, key).bytes()))
        except NotFound:
            raise InvalidPath(f"{self._source}: {rel} is not a symlink") from None
        return body.decode("utf-8", "surrogateescape")

    def fingerprint(self, rel: str) -> str | None:
        """The object's ETag from a fresh HEAD; None if no object is there."""
        check_rel(rel)
        meta = self._head(rel) if rel else None
        if meta is None and rel:
            meta = self._head(rel + LINK_SUFFIX)
        return meta["e_tag"] if meta is not None else None

    # ---- write-back --------------------------------------------------------------------------

    def put_file(self, rel: str, local_path: Path, mode: int, mtime_ns: int) -> str | None:
        check_rel(rel)
        if rel == "":
            raise IsADirectory(f"{self._source}: cannot write the root")
        size = local_path.stat().st_size
        o = self.options
        multipart = size > o.multipart_threshold_mib * MIB
        result = self._call(f"write {rel}", lambda: obstore.put(
            self._store, rel, local_path, use_multipart=multipart,
            chunk_size=o.part_size_mib * MIB, max_concurrency=4))
        return result["e_tag"]

    def make_dir(self, rel: str, mode: int) -> None:
        check_rel(rel)  # prefixes exist by their keys: nothing to create

    def make_symlink(self, rel: str, target: str) -> None:
        check_rel(rel)
        body = target.encode("utf-8", "surrogateescape")
        self._call(f"symlink {rel}", lambda: obstore.put(self._store, rel + LINK_SUFFIX, body))

    def set_attrs(self, rel: str, mode: int | None, mtime_ns: int | None) -> None:
        raise NotSupported(f"{self._source}: S3 keeps no mode or mtime for {rel}")

    def delete(self, rel: str) -> None:
        """Delete the object (or the symlink) at `rel`; absent is fine."""
        check_rel(rel)
        if rel:
            self._delete_keys([rel, rel + LINK_SUFFIX], f"delete {rel}")

    def _delete_keys(self, keys: Sequence[str], what: str) -> None:
        for i in range(0, len(keys), _DELETE_BATCH):
            batch = list(keys[i:i + _DELETE_BATCH])
            self._call(what, lambda b=batch: obstore.delete(self._store, b))  # type: ignore[misc]

    def delete_tree(self, rel: str) -> None:
        check_rel(rel)
        if rel == "":
            raise InvalidPath(f"{self._source}: refusing to delete the whole source")
        self._delete_keys(self._keys_under(rel), f"delete {rel}/")
        self.delete(rel)

    def rename(self, old: str, new: str) -> None:
        """Copy then delete: a file, or every key under a directory prefix."""
        check_rel(old)
        check_rel(new)
        if self._head(old) is not None:
            self._call(f"copy {old} to {new}", lambda: obstore.copy(self._store, old, new))
            self.delete(old)
            return
        keys = self._keys_under(old)
        if not keys:
            raise NotFound(f"{self._source}: rename {old}: not found")
        for key in keys:
            target = new + key[len(old):]
            self._call(f"copy {key} to {target}",
                       lambda k=key, t=target: obstore.copy(self._store, k, t))  # type: ignore[misc]
        self._delete_keys(keys, f"delete {old}/")

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def validate(source: str, options: Options) -> None:
    parse_source(source)
    S3Options.from_options(options)


def open_s3(source: str, options: Options) -> S3Driver:
    return S3Driver(source, S3Options.from_options(options))


SPEC = DriverSpec(
    name="s3",
    schemes=("s3",),
    summary="an S3 bucket or prefix (s3://bucket/prefix), credentials from the AWS chain",
    open=open_s3,
    validate=validate,
    option_names=tuple(OPTION_TYPES),
)
