"""Imports go one way: indexer and webapp use the core, never each other; the core uses neither
(except the CLI, the composition root)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_import_direction():
    for path in (REPO / "clipdex").rglob("*.py"):
        if path.name != "cli.py":
            assert not imported_packages(path) & {"indexer", "webapp"}, path
    for path in (REPO / "indexer").rglob("*.py"):
        assert "webapp" not in imported_packages(path), path
    for path in (REPO / "webapp").rglob("*.py"):
        assert "indexer" not in imported_packages(path), path
