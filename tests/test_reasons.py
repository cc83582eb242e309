"""One list of reject reasons: the README and the rejects schema follow `dataengine/reasons.py`."""

import ast
import json
import re
from pathlib import Path

from dataengine.reasons import IMAGE_LEVEL, NOUN_LEVEL, REASON_NAMES, REASONS, reasons_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_holds_the_reasons_table():
    assert reasons_markdown() in (ROOT / "README.md").read_text()


def test_rejects_schema_enumerates_the_reasons():
    fields = json.loads((ROOT / "schemas" / "rejects.parquet.json").read_text())["fields"]
    reason = next(field for field in fields if field["name"] == "reason")
    assert reason["enum"] == list(REASON_NAMES)


def test_manifest_schema_names_only_listed_reasons():
    schema = json.loads((ROOT / "schemas" / "manifest.schema.json").read_text())
    reasons = schema["properties"]["counts"]["properties"]["reject_reasons"]
    assert reasons["propertyNames"]["enum"] == list(REASON_NAMES)


def test_reasons_are_unique_snake_case_with_a_level():
    assert len(set(REASON_NAMES)) == len(REASONS)
    for reason in REASONS:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", reason.name)
        assert reason.level in (IMAGE_LEVEL, NOUN_LEVEL) and reason.meaning


REJECTING_CALLS = {"drop", "ImageRejected", "Reject", "BadRow", "reject"}


def reason_arguments(tree: ast.AST):
    """(line, first argument) of every call that names a reject reason."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in REJECTING_CALLS:
                yield node.lineno, node.args[0]


def test_every_reason_in_the_code_comes_from_the_list():
    """A reason given to drop()/ImageRejected()/Reject()/... is a name from dataengine.reasons (or one of its
    strings): no module defines a reason of its own."""
    import dataengine.reasons as reasons

    listed_names = {name for name in dir(reasons) if name.isupper()}
    checked = 0
    for path in (ROOT / "dataengine").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and (node.module or "").endswith("reasons") for alias in node.names}
        for line, argument in reason_arguments(tree):
            where = f"{path.relative_to(ROOT)}:{line}"
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                assert argument.value in REASON_NAMES, f"{where}: reason {argument.value!r} is not listed"
                checked += 1
            elif isinstance(argument, ast.Name) and argument.id.isupper():
                assert argument.id in imported and argument.id in listed_names, \
                    f"{where}: reason {argument.id} is not imported from dataengine/reasons.py"
                checked += 1
    assert checked >= 10  # the scan found the engine's reject calls
