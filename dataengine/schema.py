"""Loads the on-disk contract from `schemas/` (installed as the `dataengine.schemas` package)."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files

import pyarrow as pa

SCHEMA_VERSION = 1
_ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "list<int64>": pa.list_(pa.int64())}


@cache
def load_schema(filename: str) -> dict:
    return json.loads((files("dataengine.schemas") / filename).read_text(encoding="utf-8"))


@cache
def arrow_schema(name: str) -> pa.Schema:
    """`index` or `rejects`: the pyarrow schema of that parquet table."""
    fields = load_schema(f"{name}.parquet.json")["fields"]
    return pa.schema([pa.field(f["name"], _ARROW_TYPES[f["type"]], nullable=f["nullable"]) for f in fields])
