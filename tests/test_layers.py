"""The package's layers: `dataengine` never imports `finetune` (finetune registers its subcommands
through the `dataengine.commands` entry point), and only `dataengine/executors/` imports Ray."""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at any depth of the file (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_dataengine_never_imports_finetune():
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "dataengine").rglob("*.py")
                 if "finetune" in imported_modules(path)]
    assert not offenders, f"dataengine imports finetune in {offenders} (register a command instead)"


def test_only_the_executors_import_ray():
    executors = ROOT / "dataengine" / "executors"
    offenders = [str(path.relative_to(ROOT)) for folder in ("dataengine", "finetune") for path in (ROOT / folder).rglob("*.py")
                 if executors not in path.parents and "ray" in imported_modules(path)]
    assert not offenders, f"Ray imported outside dataengine/executors/: {offenders}"


def test_finetune_commands_are_registered_through_the_entry_point():
    from dataengine.cli import COMMANDS_GROUP, build_parser

    assert "finetune.cli:register" in {entry.value for entry in entry_points(group=COMMANDS_GROUP)}
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"mine", "inspect", "demo", "export-clip", "finetune", "bench"} <= set(commands)
