"""Imports go one way: indexer and webapp use the core, never each other; the core uses neither,
not even the CLI, which finds the packages' commands through entry points."""

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
        assert not imported_packages(path) & {"indexer", "webapp"}, path
    for path in (REPO / "indexer").rglob("*.py"):
        assert "webapp" not in imported_packages(path), path
    for path in (REPO / "webapp").rglob("*.py"):
        assert "indexer" not in imported_packages(path), path


def test_the_cli_assembles_every_package_s_commands():
    """The composition root finds the indexer's and the web app's commands without importing them."""
    from click.testing import CliRunner

    from clipdex.cli import cli

    names = set(cli.list_commands(None))
    assert {"index", "enqueue", "resume", "worker", "dupes"} <= names   # indexer/commands.py
    assert "serve" in names                                           # webapp/commands.py
    assert {"config", "db", "status", "search", "embed-text", "model"} <= names   # the core's own
    result = CliRunner().invoke(cli, ["index", "--help"])
    assert result.exit_code == 0 and "Index PATH in this process" in result.output
