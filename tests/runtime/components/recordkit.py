"""Components the recorder tests build on the fly: a changed relay, a plugin that
reads WASI randomness and the wall clock (issue 15)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import testcomponents


def relay_variant(tmp_path: Path) -> bytes:
    """A new build of the relay that publishes to `<topic>.x` instead of `<topic>.r`."""
    source = (testcomponents.HERE / "wat" / "relay.wat").read_text()
    assert source.count("(i32.const 0x722e)") == 1
    wat = tmp_path / "relay-x.wat"
    wat.write_text(source.replace("(i32.const 0x722e)", "(i32.const 0x782e)"))
    tool = str(testcomponents.BIN / "wasm-tools")
    core, out = tmp_path / "core.wasm", tmp_path / "relay-x.wasm"
    subprocess.run([tool, "component", "embed", str(testcomponents.WIT), "--world", "plugin",
                    str(wat), "-o", str(core)], check=True, capture_output=True)
    subprocess.run([tool, "component", "new", str(core), "-o", str(out)], check=True,
                   capture_output=True)
    return out.read_bytes()



def build_chance(tmp_path: Path) -> bytes:
    """`components/chance`: a plugin reading WASI randomness and the wall clock."""
    src = testcomponents.HERE / "chance"
    wit = tmp_path / "chance-wit"
    shutil.copytree(src / "deps", wit / "deps")
    (wit / "deps" / "astrid").mkdir()
    shutil.copy(testcomponents.WIT / "kernel.wit", wit / "deps" / "astrid")
    shutil.copy(src / "world.wit", wit)
    tool = str(testcomponents.BIN / "wasm-tools")
    core, out = tmp_path / "chance.core.wasm", tmp_path / "chance.wasm"
    subprocess.run([tool, "component", "embed", str(wit), "--world",
                    "astrid-test:chance/plugin", str(src / "chance.wat"), "-o", str(core)],
                   check=True, capture_output=True)
    subprocess.run([tool, "component", "new", str(core), "-o", str(out)], check=True,
                   capture_output=True)
    return out.read_bytes()
