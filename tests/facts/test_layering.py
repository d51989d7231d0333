"""Imports run one way: facts/ (reading hosts) sits below everything that uses what it
reads. It may import errors, units and the catalog; only collect.py, which runs the
gather on a host, names the Transport protocol (for types only, as tests/test_structure.py
requires; never a concrete transport)."""

from __future__ import annotations

import ast
from pathlib import Path

FACTS = Path(__file__).resolve().parents[2] / "provisioner" / "facts"
ALLOWED = ("provisioner.errors", "provisioner.units", "provisioner.catalog", "provisioner.facts")
RUNS_ON_A_HOST = {"collect.py"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "provisioner"}


def test_facts_imports_only_what_is_below_it() -> None:
    modules = sorted(FACTS.glob("*.py"))
    assert len(modules) > 5
    for path in modules:
        allowed = ALLOWED + (("provisioner.transport",) if path.name in RUNS_ON_A_HOST else ())
        wrong = sorted(m for m in _imports(path) if not any(m == a or m.startswith(a + ".") for a in allowed)
                       or m.startswith("provisioner.transport."))
        assert not wrong, f"facts/{path.name} imports {wrong}"


def test_no_module_outside_facts_queries_gpus() -> None:
    """One --query-gpu parser: no other Python module asks nvidia-smi for CSV rows to parse."""
    package = FACTS.parent
    for path in package.rglob("*.py"):
        if path.parent == FACTS:
            continue
        assert "--query-gpu" not in path.read_text(encoding="utf-8"), path.relative_to(package)
