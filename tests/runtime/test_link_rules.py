"""The link rules alone (links.py): names, versions, grants, resolution order,
refusals. No wasmtime, no kernel."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from astrid_runtime.errors import ManifestError
from astrid_runtime.grants import Grants
from astrid_runtime.links import (
    InterfaceRef,
    LinkError,
    LinkNode,
    compatible,
    grant_covers,
    parse_interface,
    resolve,
)
from astrid_runtime.lockfile import LockEntry, Lockfile, load_lockfile
from astrid_runtime.manifest import load_manifest


def ref(text: str) -> InterfaceRef:
    return parse_interface(text)


def node(name: str, exports: tuple[str, ...] = (), imports: tuple[str, ...] = ()) -> LinkNode:
    return LinkNode(name, tuple(map(ref, exports)), tuple(map(ref, imports)))


def test_interface_names_parse_with_and_without_a_version() -> None:
    assert ref("astrid:markdown/render@0.1.0") == InterfaceRef("astrid:markdown/render",
                                                               "0.1.0")
    assert str(ref("a:b/c")) == "a:b/c" and ref("a:b/c").version is None
    for bad in ("markdown", "astrid:markdown", "astrid:markdown/render@1", "A:b/c@1.0.0"):
        with pytest.raises(LinkError, match="is not a WIT interface name"):
            parse_interface(bad)


@pytest.mark.parametrize(("wanted", "offered", "ok"), [
    ("a:b/c@1.2.0", "a:b/c@1.2.0", True),
    ("a:b/c@1.2.0", "a:b/c@1.4.1", True),   # same major, newer: compatible
    ("a:b/c@1.2.0", "a:b/c@1.1.9", False),  # older than asked
    ("a:b/c@1.2.0", "a:b/c@2.0.0", False),  # another major
    ("a:b/c@0.2.0", "a:b/c@0.2.3", True),   # below 1.0 the minor is the major
    ("a:b/c@0.1.0", "a:b/c@0.2.0", False),
    ("a:b/c@1.0.0-rc1", "a:b/c@1.0.0", False),
    ("a:b/c", "a:b/c", True),
    ("a:b/c", "a:b/c@1.0.0", False),
    ("a:b/c@1.0.0", "a:b/d@1.0.0", False),
])
def test_versions_follow_semver(wanted: str, offered: str, ok: bool) -> None:
    assert compatible(ref(wanted), ref(offered)) is ok


def test_a_grant_names_an_interface_with_or_without_its_version() -> None:
    wanted = ref("astrid:markdown/render@0.1.0")
    assert grant_covers("astrid:markdown/render@0.1.0", wanted)
    assert grant_covers("astrid:markdown/render", wanted)
    assert not grant_covers("astrid:markdown/render@0.2.0", wanted)
    assert not grant_covers("astrid:markdown/other", wanted)
    assert not grant_covers("not a name", wanted)


def test_providers_come_before_their_importers() -> None:
    plan = resolve([node("app", imports=("x:md/render@1.0.0",)),
                    node("md", exports=("x:md/render@1.1.0",), imports=("x:esc/html@1.0.0",)),
                    node("esc", exports=("x:esc/html@1.0.0",)),
                    node("alone")])
    assert plan.refused == {}
    assert plan.order.index("esc") < plan.order.index("md") < plan.order.index("app")
    assert plan.providers == {("app", ref("x:md/render@1.0.0")): "md",
                              ("md", ref("x:esc/html@1.0.0")): "esc"}


def test_missing_mismatched_and_duplicate_providers_are_refused_in_one_line() -> None:
    plan = resolve([node("a", imports=("x:y/none@1.0.0",)),
                    node("b", imports=("x:md/render@2.0.0",)),
                    node("md", exports=("x:md/render@1.0.0",)),
                    node("md2", exports=("x:md/render@1.0.0",))])
    assert plan.refused == {
        "a": "plugin a imports x:y/none@1.0.0, which no plugin exports (missing provider)",
        "b": "plugin b imports x:md/render@2.0.0, but plugin md exports x:md/render@1.0.0 "
             "(version mismatch)",
        "md2": "plugin md2 exports x:md/render@1.0.0, already exported by plugin md",
    }
    assert plan.order == ("md",)
    assert all("\n" not in reason for reason in plan.refused.values())


def test_a_cycle_is_refused_and_so_is_whoever_depends_on_it() -> None:
    plan = resolve([node("a", exports=("x:a/i@1.0.0",), imports=("x:b/i@1.0.0",)),
                    node("b", exports=("x:b/i@1.0.0",), imports=("x:a/i@1.0.0",)),
                    node("c", imports=("x:a/i@1.0.0",)),
                    node("self", exports=("x:s/i@1.0.0",), imports=("x:s/i@1.0.0",))])
    assert plan.refused["a"] == "plugin a is in a link cycle: a -> b -> a"
    assert plan.refused["b"] == "plugin b is in a link cycle: a -> b -> a"
    assert plan.refused["self"] == "plugin self is in a link cycle: self -> self"
    assert plan.refused["c"] == ("plugin c imports x:a/i@1.0.0 from plugin a, "
                                 "which was refused")
    assert plan.order == ()


def test_manifest_declares_links_and_asks_for_its_imports(tmp_path: Path) -> None:
    (tmp_path / "plugin.toml").write_text(
        'name = "app"\nversion = "1.0.0"\ncomponent = "app.wasm"\n'
        'exports = ["x:app/api@1.0.0"]\nimports = ["x:md/render@0.1.0"]\n')
    manifest = load_manifest(tmp_path)
    assert manifest.exports == (ref("x:app/api@1.0.0"),)
    assert manifest.imports == (ref("x:md/render@0.1.0"),)
    assert manifest.asks.link == ("x:md/render@0.1.0",)
    (tmp_path / "plugin.toml").write_text(
        'name = "app"\nversion = "1.0.0"\ncomponent = "app.wasm"\nimports = ["markdown"]\n')
    with pytest.raises(ManifestError, match=r"plugin.toml:4: imports: 'markdown' is not a WIT"):
        load_manifest(tmp_path)


def test_lockfile_pins_link_grants_and_reads_them_back(tmp_path: Path) -> None:
    entry = LockEntry("app", "1.0.0", tmp_path, tmp_path / "app.wasm", "0" * 64,
                      Grants(link=("x:md/render@0.1.0",)))
    lock = Lockfile(tmp_path / "plugins.lock").with_entry(entry)
    lock.save()
    assert 'link = ["x:md/render@0.1.0"]' in (tmp_path / "plugins.lock").read_text()
    assert load_lockfile(tmp_path / "plugins.lock").get("app") == entry
    # A plugin that links nothing is pinned as before (no `link` line at all).
    lock.with_entry(replace(entry, grants=Grants())).save()
    assert "link" not in (tmp_path / "plugins.lock").read_text()
