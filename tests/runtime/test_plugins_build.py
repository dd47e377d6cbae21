"""The shipped plugins build from source into components of the `plugin` world.

Builds once per session into a temporary directory (the tree's committed
components are left alone). componentize-py output is not byte-for-byte
reproducible, so Python builds are checked for shape; the C plugin is
checked byte for byte against the committed, pinned component.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from astrid_runtime.engine import digest
from astrid_runtime.errors import KernelError
from astrid_runtime.lockfile import load_lockfile, read_verified
from astrid_runtime.manifest import load_manifest
from astrid_runtime.scaffold.build import (
    BuildError,
    BuildResult,
    Language,
    build_inputs,
    build_plugin,
    shipped_plugins,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {p.name: p for p in shipped_plugins(ROOT)}
WASM_TOOLS = Path(sys.executable).parent / "wasm-tools"

INIT = "export init: func(config: string) -> result<_, string>;"
ON_MESSAGE = "export on-message: func(topic: string, payload: list<u8>) -> result<_, string>;"


@pytest.fixture(scope="session")
def fresh_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuildResult]:
    out = tmp_path_factory.mktemp("plugin-builds")
    return {name: build_plugin(path, out=out / f"{name}.wasm", work_dir=out / f"{name}.work",
                               force=True)
            for name, path in SHIPPED.items()}


def component_wit(path: Path) -> str:
    proc = subprocess.run([str(WASM_TOOLS), "component", "wit", str(path)],
                          capture_output=True, text=True, check=True)
    return proc.stdout


def test_the_three_shipped_plugins_are_there() -> None:
    assert {"router", "notes", "wordcount"} <= set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_fresh_build_is_a_plugin_world_component(
        name: str, fresh_builds: dict[str, BuildResult]) -> None:
    result = fresh_builds[name]
    assert result.rebuilt and result.size > 0
    wit = component_wit(result.component)
    assert INIT in wit and ON_MESSAGE in wit
    imports = {line.strip().removeprefix("import ").rstrip(";")
               for line in wit.splitlines() if line.strip().startswith("import ")}
    assert "astrid:kernel/bus@0.1.0" in imports
    foreign = {i for i in imports if not i.startswith(("astrid:kernel/", "wasi:"))}
    assert not foreign
    if result.language is Language.C:
        # No libc, no WASI: the C plugin imports only the Host ABI.
        assert all(i.startswith("astrid:kernel/") for i in imports)


def test_c_plugin_build_is_reproducible_and_matches_the_pin(
        fresh_builds: dict[str, BuildResult]) -> None:
    fresh = fresh_builds["wordcount"].component.read_bytes()
    shipped = load_manifest(SHIPPED["wordcount"]).component.read_bytes()
    assert fresh == shipped
    entry = load_lockfile(ROOT / "plugins.lock").get("wordcount")
    assert entry is not None and entry.blake3 == digest(fresh)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_committed_component_was_built_from_the_current_sources(name: str) -> None:
    manifest = load_manifest(SHIPPED[name])
    recorded = manifest.component.with_suffix(".inputs").read_text(encoding="utf-8")
    assert recorded == build_inputs(SHIPPED[name]), (
        f"{name}: sources changed since its component was built; "
        "run scripts/build-plugins.sh and commit the component and plugins.lock")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_committed_component_verifies_against_plugins_lock(name: str) -> None:
    manifest = load_manifest(SHIPPED[name])
    entry = load_lockfile(ROOT / "plugins.lock", missing_ok=False).get(name)
    assert entry is not None, f"{name} is not pinned in plugins.lock"
    assert read_verified(entry, manifest.component)
    assert entry.version == manifest.version
    assert entry.grants == manifest.asks
    assert entry.component == manifest.component


def test_unchanged_inputs_are_not_rebuilt(fresh_builds: dict[str, BuildResult]) -> None:
    first = fresh_builds["wordcount"]
    again = build_plugin(SHIPPED["wordcount"], out=first.component,
                         work_dir=first.component.parent / "again.work")
    assert not again.rebuilt and again.component == first.component


def test_directory_without_sources_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "plugin.toml").write_text('name = "empty"\nversion = "1"\n'
                                          'component = "empty.wasm"\n')
    with pytest.raises(BuildError) as e:
        build_plugin(tmp_path)
    assert "no app.py (Python) or *.c (C) source" in str(e.value)
    assert "\n" not in str(e.value)


def test_python_that_fails_at_import_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "plugin.toml").write_text('name = "broken"\nversion = "1"\n'
                                          'component = "broken.wasm"\n')
    (tmp_path / "app.py").write_text("import astrid_sdk\nraise RuntimeError('boom at import')\n")
    with pytest.raises(BuildError) as e:
        build_plugin(tmp_path)
    message = str(e.value)
    assert message == "componentize-py (broken) failed: RuntimeError: boom at import"
    assert not (tmp_path / "broken.wasm").exists()


def test_missing_manifest_is_a_kernel_error(tmp_path: Path) -> None:
    with pytest.raises(KernelError):
        build_plugin(tmp_path)
