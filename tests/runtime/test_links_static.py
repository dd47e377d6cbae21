"""The seed's example composed statically: `wasm-tools compose` fuses the shipped
Python `mdview` with the shipped C `markdown` into one component, as
docs/plugins.md shows, and the kernel runs it as one ordinary plugin (no
import to link, no grant, one Store). test_links.py shows the shared fate.
"""

from __future__ import annotations

import json
from pathlib import Path

from linkkit import MARKDOWN_DIR, PluginDir, compose, write_tree

from astrid_runtime.bus import Tap
from astrid_runtime.engine import KernelEngine
from astrid_runtime.kernel import BootPlan, Kernel
from astrid_runtime.supervisor import State

MDVIEW = MARKDOWN_DIR.parent / "mdview" / "mdview.wasm"
MANIFEST = '[capabilities]\nsubscribe = ["tools.markdown"]\npublish = ["agent.response"]\n'


async def test_python_caller_and_c_renderer_composed_run_as_one_plugin(
        kernel: Kernel, engine: KernelEngine, tmp_path: Path) -> None:
    composed = compose(MDVIEW, MARKDOWN_DIR / "markdown.wasm")
    component = engine.compile(composed.read_bytes()).component  # the kernel's cache
    imports = component.type.imports(engine.engine)
    assert not [name for name in imports if name.startswith("astrid:markdown/")]
    await kernel.boot(BootPlan(write_tree(tmp_path, [PluginDir("mdstatic", composed,
                                                                MANIFEST)])))
    sup = kernel.supervisors["mdstatic"]
    await sup.wait_for(lambda s: s.state is not State.STARTING)
    assert sup.state is State.RUNNING, sup.last_error
    assert kernel.refused == {} and kernel.status()["links"] == []
    tap = Tap(kernel.bus, "agent.response")
    kernel.publish("tools.markdown", json.dumps({"text": "# Hi\n\n*one* Store", "id": 3}).encode())
    assert json.loads((await tap.receive()).payload) == {
        "text": "<h1>Hi</h1>\n<p><em>one</em> Store</p>\n", "plugin": "mdview",
        "in_reply_to": 3}
