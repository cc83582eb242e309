"""One list of reject reasons: the README and the rejects schema follow `dataengine/reasons.py`."""

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


def test_every_reason_constant_in_the_code_is_in_the_list():
    """No module defines a reason of its own: every `drop(...)`/`ImageRejected(...)` literal is listed."""
    literal = re.compile(r"(?:drop|ImageRejected|Reject)\(\s*\"([a-z_]+)\"")
    for path in (ROOT / "dataengine").rglob("*.py"):
        for name in literal.findall(path.read_text()):
            assert name in REASON_NAMES, f"{path.name}: reason {name!r} is not in dataengine/reasons.py"
