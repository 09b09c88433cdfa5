"""The architecture, pinned: checkpoint <- resilience <- chaos.

* `checkpoint` (mechanism) imports nothing else of the project;
* `resilience` (policies, runtime, CLI) may import `checkpoint`, never `chaos`;
* `chaos` uses only the public names of both (no `_private` modules);
* the exactly-once checker imports nothing of the project at all.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("checkpoint", "resilience", "chaos")


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            yield node.lineno, "." * node.level + (node.module or "")


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in _files(package):
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top in forbidden:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return out


def test_checkpoint_imports_nothing_of_ours() -> None:
    assert _violations("checkpoint", ("resilience", "chaos")) == []


def test_resilience_never_imports_chaos() -> None:
    assert _violations("resilience", ("chaos",)) == []


def test_chaos_uses_public_names_only() -> None:
    bad = []
    for path in _files("chaos"):
        for line, name in _imports(path):
            parts = name.split(".")
            if parts[0] in ("checkpoint", "resilience") and any(p.startswith("_") for p in parts):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports private {name}")
    assert bad == []


def test_no_relative_imports() -> None:
    # Absolute imports keep the layer of every dependency visible in the line itself.
    rel = [
        f"{p.relative_to(ROOT)}:{line}"
        for pkg in PROJECT
        for p in _files(pkg)
        for line, name in _imports(p)
        if name.startswith(".")
    ]
    assert rel == []


@pytest.mark.parametrize("package", PROJECT)
def test_the_layering_check_can_fail(package: str, tmp_path: Path) -> None:
    # The scanner must see every import form, or the tests above prove nothing.
    src = tmp_path / "m.py"
    src.write_text("import chaos.x\nfrom resilience import y\nfrom resilience._etcd import z\n"
                   "def f():\n    import checkpoint._state\n")
    names = [n for _, n in _imports(src)]
    assert "chaos.x" in names
    assert "resilience.y" in names
    assert "resilience._etcd.z" in names
    assert "checkpoint._state" in names
