"""Shared helpers for sources that read tables of (image, caption) rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ..config import ConfigError


def read_table(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json", ".ndjson"):
            from pyarrow import json as pa_json

            table = pa_json.read_json(path)
        elif suffix in (".csv", ".tsv"):
            from pyarrow import csv as pa_csv

            options = pa_csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            table = pa_csv.read_csv(path, parse_options=options)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            raise ConfigError(f"--captions: {path}: unsupported table format {suffix!r} (use .jsonl, .csv or .parquet)")
    except pa.ArrowInvalid as error:
        raise ConfigError(f"--captions: cannot read {path}: {error}") from error
    return table.to_pylist()


def pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], flag: str) -> str:
    if wanted:
        check_column(columns, wanted, flag)
        return wanted
    for candidate in candidates:
        if candidate in columns:
            return candidate
    raise ConfigError(f"{flag}: none of the columns {', '.join(columns)} is one of {', '.join(candidates)}; name it with {flag}")


def check_column(columns: list[str], wanted: str | None, flag: str) -> None:
    if wanted and wanted not in columns:
        raise ConfigError(f"{flag}: no column {wanted!r} (columns: {', '.join(columns)})")


def captions_of(value) -> list[str]:
    """A caption cell as a list of texts: a string, a list of strings, or empty."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [str(item) for item in value if item is not None]
    return [str(value)]
