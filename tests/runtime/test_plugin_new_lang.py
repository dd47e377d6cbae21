"""`astrid plugin new --lang c|js`: a C plugin that includes the shipped C SDK
(astrid_runtime/sdk/c), built with zig, and a JavaScript plugin built with
componentize-js; each installs and answers in a kernel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
import testcomponents
from testkit import MemoryKv

from astrid_runtime.bus import Tap
from astrid_runtime.engine import KernelEngine
from astrid_runtime.kernel import BootPlan, open_kernel
from astrid_runtime.lockfile import entry_for, load_lockfile
from astrid_runtime.manifest import load_manifest
from astrid_runtime.scaffold import ScaffoldError, scaffold_plugin
from astrid_runtime.scaffold.build import BuildError, _js_tool, build_inputs, build_plugin
from astrid_runtime.supervisor import State
from tests.support.mounts import missing_part


async def test_c_plugin_from_the_template_builds_installs_and_answers(
        tmp_path: Path, engine: KernelEngine) -> None:
    plugin_dir = scaffold_plugin("c-bot", tmp_path / "plugins", "c")
    assert sorted(p.name for p in plugin_dir.iterdir()) == [".gitignore", "c-bot.c",
                                                           "plugin.toml"]
    # The glue is the SDK's, not a copy: it is an input of the build.
    assert "file sdk/c/astrid.c " in build_inputs(plugin_dir)
    built = build_plugin(plugin_dir)
    lock = tmp_path / "plugins.lock"
    load_lockfile(lock).with_entry(
        entry_for(load_manifest(plugin_dir), built.component.read_bytes())).save()
    async with open_kernel(engine, MemoryKv()) as kernel:
        await kernel.boot(BootPlan(lock, (plugin_dir,)))
        sup = kernel.supervisors["c-bot"]
        await sup.wait_for(lambda s: s.state in (State.RUNNING, State.DISABLED))
        assert sup.state is State.RUNNING, sup.last_error
        tap = Tap(kernel.bus, "agent.response")
        kernel.publish("c-bot.ping", b"")
        assert json.loads((await tap.receive()).payload) == {"text": "pong", "plugin": "c-bot"}
        await kernel.stop()


def test_unknown_language_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError, match="no plugin template for 'cobol'; use one of c, js, "
                                            "python"):
        scaffold_plugin("x", tmp_path, "cobol")
    assert list(tmp_path.iterdir()) == []


def test_cli_scaffolds_in_c_and_prints_a_hint_that_works_anywhere(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "astrid_runtime.client_cli", "plugin", "new",
                        "--lang", "c", "greeter", str(tmp_path)],
                       capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "greeter" / "greeter.c").is_file()
    assert "`astrid plugin build " in r.stdout  # run outside: test_plugin_new_outside.py
    assert "scripts/" not in r.stdout


def _js_tool_or_skip() -> None:
    try:
        _js_tool()
    except BuildError as e:
        missing_part(f"JavaScript toolchain: {e}")  # CI installs it (setup.d/45-js.sh)


async def test_js_plugin_from_the_template_builds_installs_and_answers(
        tmp_path: Path, engine: KernelEngine) -> None:
    """componentize-js takes minutes here: the component is cached in the test build
    directory under the digest of its build inputs (template, WIT, toolchain)."""
    _js_tool_or_skip()
    plugin_dir = scaffold_plugin("js-bot", tmp_path / "plugins", "js")
    assert sorted(p.name for p in plugin_dir.iterdir()) == [".gitignore", "app.js",
                                                           "plugin.toml"]
    inputs = build_inputs(plugin_dir)
    assert "tool componentize-js==" in inputs
    key = blake3.blake3(inputs.encode()).hexdigest()[:16]
    cached = testcomponents.BUILD / f"js-bot-{key}.wasm"
    if not cached.exists():
        testcomponents.BUILD.mkdir(exist_ok=True)
        built = build_plugin(plugin_dir, out=tmp_path / "js-bot.wasm")
        shutil.copyfile(built.component, cached)
    shutil.copyfile(cached, plugin_dir / "js-bot.wasm")
    lock = tmp_path / "plugins.lock"
    load_lockfile(lock).with_entry(
        entry_for(load_manifest(plugin_dir), (plugin_dir / "js-bot.wasm").read_bytes())).save()
    async with open_kernel(engine, MemoryKv()) as kernel:
        await kernel.boot(BootPlan(lock, (plugin_dir,)))
        sup = kernel.supervisors["js-bot"]
        await sup.wait_for(lambda s: s.state in (State.RUNNING, State.DISABLED))
        assert sup.state is State.RUNNING, sup.last_error
        tap = Tap(kernel.bus, "agent.response")
        kernel.publish("js-bot.ping", b"hi")
        assert json.loads((await tap.receive()).payload) == {
            "text": "pong", "plugin": "js-bot", "echo": "hi"}
        await kernel.stop()
