"""The exactly-once checker shares no code path with the job it judges.

A bug in shared validation or ledger code would be wrong the same way in the job
and in the checker, and the checker would then bless it. So fusion_jobs/payments/checker.py
may import the standard library only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CHECKER = Path(__file__).resolve().parents[1] / "fusion_jobs" / "payments" / "checker.py"
PROJECT_PACKAGES = {"resilience", "checkpoint", "chaos"}


def _imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    """Return (module, relative level) for every import anywhere in the tree."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def test_checker_imports_no_project_package() -> None:
    imports = _imported_modules(ast.parse(CHECKER.read_text(encoding="utf-8")))
    assert imports, "the AST walk found no import at all: the test is broken"
    for module, level in imports:
        assert level == 0, f"relative import of {module!r} in checker.py"
        assert module.split(".")[0] not in PROJECT_PACKAGES, f"checker.py imports {module}"


def test_checker_imports_only_the_standard_library() -> None:
    imports = _imported_modules(ast.parse(CHECKER.read_text(encoding="utf-8")))
    for module, _ in imports:
        top = module.split(".")[0]
        assert top == "__future__" or top in sys.stdlib_module_names, (
            f"checker.py imports non-stdlib {module}"
        )


def test_no_dynamic_imports_sneak_past_the_ast_check() -> None:
    source = CHECKER.read_text(encoding="utf-8")
    assert "__import__" not in source
    assert "importlib" not in source
