"""Overlay mounts for tests: astrid-fs and kernel overlayfs behind one interface.

A `PairPool` hands out fresh (mounted, reference) directory pairs cheaply: the lower
layer holds many copies of one template tree (`ex0000`, `ex0001`, ...), the
reference side gets a plain copy of the same template, and when the prepared copies
run out the pool unmounts, adds more copies to the lower layer and mounts again.
So one mount serves many hypothesis examples, and no example sees another's state.

Everything here needs root (kernel overlayfs and FUSE mounts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def astrid_fs_program() -> str:
    """The `astrid-fs` console script of the running interpreter's environment."""
    here = Path(sys.executable).parent / "astrid-fs"
    if here.exists():
        return str(here)
    found = shutil.which("astrid-fs")
    if found is None:
        raise RuntimeError("astrid-fs program not found (install the package: pip install -e .)")
    return found


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == target:
                return True
    return False


class OverlayMount:
    """An overlay with lower dir `lower`, mounted on `mnt` (subclasses say how)."""

    kind = "?"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.lower = base / "lower"
        self.mnt = base / "mnt"
        self.lower.mkdir(parents=True, exist_ok=True)
        self.mnt.mkdir(parents=True, exist_ok=True)

    def mount(self) -> None:
        raise NotImplementedError

    def umount(self) -> None:
        raise NotImplementedError

    def _run(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )


class KernelOverlay(OverlayMount):
    """Linux overlayfs with redirect_dir=on: the reference overlay semantics."""

    kind = "kernel-overlay"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.upper = base / "upper"
        self.work = base / "work"
        self.upper.mkdir(exist_ok=True)
        self.work.mkdir(exist_ok=True)

    def mount(self) -> None:
        # index=on: lower hard links stay links after copy-up.
        opts = (f"lowerdir={self.lower},upperdir={self.upper},workdir={self.work},"
                "redirect_dir=on,index=on")
        self._run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.mnt)])

    def umount(self) -> None:
        if is_mounted(self.mnt):
            self._run(["umount", str(self.mnt)])


class AstridFsMount(OverlayMount):
    """`astrid-fs mount --lower L --session NAME MNT` with a private $ASTRID_HOME."""

    kind = "astrid-fs"

    def __init__(self, base: Path, session: str = "model") -> None:
        super().__init__(base)
        self.home = base / "home"
        self.home.mkdir(exist_ok=True)
        self.session = session
        self.env = dict(os.environ, ASTRID_HOME=str(self.home))

    @property
    def upper(self) -> Path:
        return self.home / "sessions" / self.session / "upper"

    def mount(self) -> None:
        self._run(
            [
                astrid_fs_program(),
                "mount",
                "--lower",
                str(self.lower),
                "--session",
                self.session,
                str(self.mnt),
            ],
            env=self.env,
        )

    def umount(self) -> None:
        if is_mounted(self.mnt):
            self._run([astrid_fs_program(), "umount", str(self.mnt)], env=self.env)


def make_mount(kind: str, base: Path) -> OverlayMount:
    if kind == KernelOverlay.kind:
        return KernelOverlay(base)
    if kind == AstridFsMount.kind:
        return AstridFsMount(base)
    raise ValueError(f"unknown overlay kind {kind!r}")


class PairPool:
    """Fresh (mounted dir, reference dir) pairs, each starting as a copy of `template`.

    `build_template(path)` fills an empty directory; it is called once per copy, in
    the lower layer (while unmounted) and in the reference tree.
    """

    def __init__(
        self,
        overlay: OverlayMount,
        ref_root: Path,
        build_template: Callable[[Path], None],
        batch: int = 64,
    ) -> None:
        self.overlay = overlay
        self.ref_root = ref_root
        self.build_template = build_template
        self.batch = batch
        self.prepared = 0
        self.used = 0
        self.remounts = 0
        self.ref_root.mkdir(parents=True, exist_ok=True)
        self._add_batch()
        self.overlay.mount()

    def _add_batch(self) -> None:
        for i in range(self.prepared, self.prepared + self.batch):
            self.build_template(self.overlay.lower / f"ex{i:05d}")
        self.prepared += self.batch

    def fresh_pair(self) -> tuple[Path, Path]:
        if self.used == self.prepared:
            self.overlay.umount()
            self._add_batch()
            self.overlay.mount()
            self.remounts += 1
        name = f"ex{self.used:05d}"
        self.used += 1
        ref = self.ref_root / name
        self.build_template(ref)
        return self.overlay.mnt / name, ref

    def close(self) -> None:
        self.overlay.umount()
