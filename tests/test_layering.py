"""The architecture, pinned: checkpoint <- resilience <- {fusion_jobs, chaos, examples, bench}.

* `checkpoint` (mechanism) imports nothing else of the project;
* `resilience` (framework: policies, runtime, coordination, CLI) may import `checkpoint`,
  never `chaos` nor the applications in `fusion_jobs`;
* no package imports another package's private modules (a name starting with ``_``):
  applications, the harness, benchmarks and examples use public names only;
* `chaos` reads the job's state through APIs, never by etcd key or sink table name;
* the payments checker imports nothing of the project at all
  (tests/test_checker_independent.py).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("checkpoint", "resilience", "chaos", "fusion_jobs")
USERS = ("bench", "examples")  # written as a user would: public names only
# Storage layouts the harness must not reach into by string: etcd keys and sink tables.
LAYOUT_STRINGS = ("/resilience/", "_resilience_")


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


def _strings(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                    ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings):
            yield node.lineno, node.value


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


def _private_imports(path: Path, own: str | None) -> list[str]:
    """Imports of another package's private modules or names from `path`."""
    bad = []
    for line, name in _imports(path):
        parts = name.split(".")
        if parts[0] in PROJECT and parts[0] != own and any(p.startswith("_") for p in parts):
            bad.append(f"{path.relative_to(ROOT)}:{line} imports private {name}")
    return bad


def test_checkpoint_imports_nothing_of_ours() -> None:
    assert _violations("checkpoint", ("resilience", "chaos", "fusion_jobs")) == []


def test_the_framework_never_imports_the_harness_or_the_applications() -> None:
    assert _violations("resilience", ("chaos", "fusion_jobs")) == []


@pytest.mark.parametrize("package", [*PROJECT, *USERS])
def test_no_package_uses_another_ones_private_modules(package: str) -> None:
    own = package if package in PROJECT else None
    bad = [v for path in _files(package) for v in _private_imports(path, own)]
    assert bad == []


def test_chaos_reads_state_through_apis_not_storage_layouts() -> None:
    bad = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
           for path in _files("chaos") for line, text in _strings(path)
           if any(layout in text for layout in LAYOUT_STRINGS)]
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


def test_the_layering_checks_can_fail(tmp_path: Path) -> None:
    # The scanners must see every import form and every string, or the tests above
    # prove nothing.
    src = tmp_path / "m.py"
    src.write_text('"""Docstring naming /resilience/jobs/x: fine."""\n'
                   "import chaos.x\nfrom resilience import y\n"
                   "from resilience.coordination._client import z\n"
                   "def f():\n    import checkpoint._state\n"
                   "    return db.execute('SELECT * FROM _resilience_sinks')\n")
    names = [n for _, n in _imports(src)]
    assert "chaos.x" in names
    assert "resilience.y" in names
    assert "resilience.coordination._client.z" in names
    assert "checkpoint._state" in names
    src = src.rename(ROOT / "tests" / f".layering-probe-{tmp_path.name}.py")
    try:
        bad = _private_imports(src, own="chaos")
        # resilience.coordination._client (as module and as name), checkpoint._state
        assert len(bad) == 3, bad
        assert _private_imports(src, own="resilience") != []
        strings = [text for _, text in _strings(src)]
        assert any("_resilience_sinks" in t for t in strings)
        assert not any("/resilience/jobs" in t for t in strings)  # the docstring is allowed
    finally:
        src.unlink()
