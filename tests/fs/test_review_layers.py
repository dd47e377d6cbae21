"""Issue 10: the review logic (astrid_fs/review) never talks to a mount's
daemon itself: the CLI gives it a hook (review/mountlink.py). Nothing in
the package may import the FUSE side or the CLI, and no module grows past
the ~400 lines a module holds one idea in."""

from __future__ import annotations

import ast
from pathlib import Path

REVIEW = Path(__file__).resolve().parents[2] / "astrid_fs" / "review"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_review_imports_neither_the_fuse_side_nor_the_cli() -> None:
    modules = sorted(REVIEW.glob("*.py"))
    assert len(modules) > 10
    offenders = {p.name: sorted(m for m in _imports(p)
                                if m.startswith(("astrid_fs.fuse", "astrid_fs.cli", "pyfuse3")))
                 for p in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_review_modules_stay_under_400_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in REVIEW.glob("*.py")}
    assert {k: v for k, v in sizes.items() if v > 400} == {}
