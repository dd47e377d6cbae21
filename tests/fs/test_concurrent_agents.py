"""Several agents and tools on one mount at once, each checked against its
own model of what it did, then the session committed and the lower layer
checked: what suites do one call at a time, done side by side.

- writers, each in its own directory of lower files: create, append,
  pwrite, truncate, rename, unlink, an editor's save (temp file, fsync,
  rename over), read back and list after their own changes;
- a walker listing and stat-ing the whole tree over and over (an IDE's
  watcher, `git status`), checking no listing names anything twice;
- a remover making a directory of files and removing each name as it
  lists it, then the directory (`git clean`, C programs);
- readers of big lower files (checksums).

Found this way (each with a test of its own besides): listings mixing a
reader's chunks from two listings (kernel cache and offsets, cache.py
`Listing`), the remover skipping names, inode numbers given again
(inodes.py). The work is a fixed number of operations per writer; the
others run until the writers are done.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

from astrid_fs.cli.daemonlink import DaemonLink
from astrid_fs.review.commit import commit
from astrid_fs.session import open_session
from tests.support.mounts import MountedSession

Mount = Callable[..., MountedSession]
WRITERS = 4
OPS = 1500
FILES = 120


def _lower_text(w: int, i: int) -> bytes:
    return f"lower w{w} f{i}\n".encode() * (i % 7 + 1)


class Writer:
    def __init__(self, root: Path, w: int) -> None:
        self.d = root / f"w{w}"
        self.rng = random.Random(w)
        self.model = {f"f{i:03d}": _lower_text(w, i) for i in range(FILES)}
        self.n = 0

    def new_name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def step(self) -> None:
        rng, d, model = self.rng, self.d, self.model
        names = sorted(model)
        k = rng.random()
        if k < 0.15 or not names:
            name = self.new_name("n")
            data = rng.randbytes(rng.randrange(0, 40000))
            (d / name).write_bytes(data)
            model[name] = data
            return
        name = rng.choice(names)
        if k < 0.30:
            data = b"a" * rng.randrange(1, 300)
            with open(d / name, "ab") as f:
                f.write(data)
            model[name] += data
        elif k < 0.50:
            assert (d / name).read_bytes() == model[name], name
        elif k < 0.60:  # an editor's save
            data = rng.randbytes(rng.randrange(0, 20000))
            tmp = d / f".{name}.swp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, d / name)
            model[name] = data
        elif k < 0.67:
            cur = bytearray(model[name])
            off = rng.randrange(0, len(cur) + 1)
            data = rng.randbytes(rng.randrange(1, 5000))
            fd = os.open(d / name, os.O_WRONLY)
            try:
                os.pwrite(fd, data, off)
            finally:
                os.close(fd)
            cur[off:off + len(data)] = data
            model[name] = bytes(cur)
        elif k < 0.73:
            size = rng.randrange(0, len(model[name]) + 100)
            os.truncate(d / name, size)
            model[name] = model[name][:size] + b"\0" * max(0, size - len(model[name]))
        elif k < 0.81:
            new = self.new_name("r")
            os.rename(d / name, d / new)
            model[new] = model.pop(name)
        elif k < 0.88:
            os.unlink(d / name)
            del model[name]
        else:
            listed = sorted(os.listdir(d))
            assert listed == sorted(model), (
                f"{d.name}: twice {[n for n, c in collections.Counter(listed).items() if c > 1]}"
                f" extra {sorted(set(listed) - set(model))}"
                f" missing {sorted(set(model) - set(listed))}")

    def check(self) -> None:
        assert sorted(os.listdir(self.d)) == sorted(self.model)
        for name, data in self.model.items():
            assert (self.d / name).read_bytes() == data, name


def test_writers_walker_remover_and_readers_at_once(tmp_path: Path, mount_session: Mount) -> None:
    lower = tmp_path / "lower"
    for w in range(WRITERS):
        (lower / f"w{w}").mkdir(parents=True)
        for i in range(FILES):
            (lower / f"w{w}" / f"f{i:03d}").write_bytes(_lower_text(w, i))
    (lower / "big").mkdir()
    rng = random.Random(0)
    sums = {}
    for i in range(2):
        data = rng.randbytes(1 << 20) * 16
        (lower / "big" / f"b{i}").write_bytes(data)
        sums[f"b{i}"] = hashlib.sha256(data).hexdigest()
    s = mount_session(lower)
    mnt = s.mnt
    writers = [Writer(mnt, w) for w in range(WRITERS)]
    done = threading.Event()
    errors: list[str] = []
    counts: dict[str, int] = collections.Counter()  # (each key one thread's)
    writing = [WRITERS]
    lock = threading.Lock()

    def run(name: str, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as e:  # reported below, with the thread's name
            errors.append(f"{name}: {e!r}")
            done.set()
        finally:
            if name.startswith("writer"):
                with lock:
                    writing[0] -= 1
                    if not writing[0]:
                        done.set()

    def writer(wr: Writer) -> Callable[[], None]:
        def body() -> None:
            for _ in range(OPS):
                wr.step()
            wr.check()
        return body

    def walker() -> None:
        while not done.is_set():
            for root, dirs, files in os.walk(mnt):
                listed = dirs + files
                assert len(listed) == len(set(listed)), (
                    f"{root}: {[n for n, c in collections.Counter(listed).items() if c > 1]}")
                for f in files:
                    with contextlib.suppress(FileNotFoundError):  # (removed since)
                        os.lstat(os.path.join(root, f))
            counts["walks"] += 1

    def remover() -> None:
        r = random.Random(1)
        d = mnt / "clean"
        while not done.is_set():
            d.mkdir()
            made = r.randrange(50, 400)
            for i in range(made):
                (d / f"c{i:04d}").write_bytes(b"x")
            removed = 0
            with os.scandir(d) as it:
                for entry in it:
                    os.unlink(entry.path)
                    removed += 1
            assert removed == made, f"listed {removed} of {made}"
            d.rmdir()
            counts["removals"] += 1

    def reader() -> None:
        r = random.Random(2)
        while not done.is_set():
            name = f"b{r.randrange(2)}"
            h = hashlib.sha256()
            with open(mnt / "big" / name, "rb") as f:
                while chunk := f.read(1 << 17):
                    h.update(chunk)
            assert h.hexdigest() == sums[name], name
            counts["reads"] += 1

    threads = [threading.Thread(target=run, args=(f"writer{w.d.name}", writer(w)))
               for w in writers]
    threads += [threading.Thread(target=run, args=(n, fn))
                for n, fn in (("walker", walker), ("remover", remover), ("reader", reader))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # Each helper did its work at least once while the writers ran.
    assert counts["walks"] and counts["removals"] and counts["reads"], counts

    session = open_session(s.name, s.home)
    commit(session, [], mount=DaemonLink(session))
    for wr in writers:
        here = lower / wr.d.name
        assert sorted(os.listdir(here)) == sorted(wr.model)
        for name, data in wr.model.items():
            assert (here / name).read_bytes() == data, name
    assert not (lower / "clean").exists()
