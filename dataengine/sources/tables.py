"""Shared helpers for sources that read tables of (image, caption) rows.

One bad row never refuses the table: a JSONL line that is not JSON (or not an object, or not
UTF-8), a CSV row with the wrong number of fields and one the csv module cannot parse (a field
over `CSV_FIELD_LIMIT`) are `BadRow`s, which the folder source turns into `source_error` reject
rows; the rest is mined. JSONL and CSV are read row by row for that
reason (a whole-table reader such as pyarrow's refuses the file at its first bad line, and infers
column types from the first rows, so one caption `42` among strings would refuse it too). A table
that cannot be read at all (no header, unreadable parquet) is still one `ConfigError`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ..config import ConfigError

# The csv module's own limit on one field (its default, 128 Ki characters, is left as it is: the
# setting is process-wide): a row with a longer field is a BadRow, and the rows after it are read.
CSV_FIELD_LIMIT = csv.field_size_limit()


@dataclass(frozen=True)
class BadRow:
    row: int  # 0-based row number (data rows, the CSV header not counted)
    message: str


def read_table(path: Path) -> list[dict | BadRow]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            return _read_jsonl(path)
        if suffix == ".json":
            return _read_json(path)
        if suffix in (".csv", ".tsv"):
            return _read_csv(path, "\t" if suffix == ".tsv" else ",")
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        raise ConfigError(f"--captions: {path}: unsupported table format {suffix!r} (use .jsonl, .csv or .parquet)")
    except (pa.ArrowException, OSError) as error:
        raise ConfigError(f"--captions: cannot read {path}: {error}") from error


def _read_jsonl(path: Path) -> list[dict | BadRow]:
    rows: list[dict | BadRow] = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            rows.append(_json_row(line, len(rows), f"line {number}"))
    return rows


def _read_json(path: Path) -> list[dict | BadRow]:
    """A .json table: a JSON list of row objects, or JSON lines."""
    data = path.read_bytes()
    if data.lstrip()[:1] != b"[":
        return _read_jsonl(path)
    try:
        values = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ConfigError(f"--captions: {path} is not valid JSON ({error})") from error
    return [value if isinstance(value, dict) else BadRow(number, f"row {number} is a {type(value).__name__}, not an object")
            for number, value in enumerate(values)]


def _json_row(line: bytes, row: int, where: str) -> dict | BadRow:
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        return BadRow(row, f"{where}: not UTF-8 ({error})")
    except (json.JSONDecodeError, RecursionError) as error:
        return BadRow(row, f"{where}: not valid JSON ({error})")
    if not isinstance(value, dict):
        return BadRow(row, f"{where}: a JSON {type(value).__name__}, not an object")
    return value


def _read_csv(path: Path, delimiter: str) -> list[dict | BadRow]:
    """Every cell a string (an empty cell is None); a row whose field count differs from the header's,
    or that the csv module cannot parse (a field over `CSV_FIELD_LIMIT` characters, say), is a BadRow
    and reading goes on at the next line. A header that cannot be parsed is a ConfigError."""
    rows: list[dict | BadRow] = []
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
        except csv.Error as error:
            raise ConfigError(f"--captions: {path}: cannot read the header (line {reader.line_num}): {error}") from None
        if header is None:
            return []
        if any(_has_surrogates(name) for name in header):
            raise ConfigError(f"--captions: {path}: the header is not UTF-8")
        while True:
            line = reader.line_num
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as error:  # the rest of the bad line is skipped; the next line is a row again
                rows.append(BadRow(len(rows), f"line {reader.line_num}: {error}"))
                if reader.line_num == line:  # nothing consumed: never loop on the same error
                    break
                continue
            where = f"line {reader.line_num}"
            if not fields:
                continue
            if len(fields) != len(header):
                rows.append(BadRow(len(rows), f"{where}: {len(fields)} fields, the header has {len(header)}"))
            elif any(_has_surrogates(field) for field in fields):
                rows.append(BadRow(len(rows), f"{where}: not UTF-8"))
            else:
                rows.append({name: (value if value != "" else None) for name, value in zip(header, fields, strict=True)})
    return rows


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def table_columns(rows: list[dict | BadRow]) -> list[str]:
    """Column names in order of first appearance across the good rows."""
    columns: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            columns.update(dict.fromkeys(row))
    return list(columns)


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
    """A caption cell as a list of normalised texts: a string, UTF-8 bytes, a list of them, or empty.

    Anything else (a number, an object, bytes that are not UTF-8) raises ValueError or TypeError:
    the row is a `source_error` reject, never a caption "42" or "b'a dog'"."""
    from ..nouns import normalize_caption

    if value is None:
        return []
    if isinstance(value, str | bytes | bytearray):
        return [normalize_caption(value)]
    if isinstance(value, list | tuple):
        return [normalize_caption(item) for item in value if item is not None]
    raise TypeError(f"a caption cell must be a string or a list of strings, got {type(value).__name__} {value!r:.60}")


def text_cell(value, column: str) -> str | None:
    """A path or id cell as text: a string (or UTF-8 bytes) or an integer; anything else raises TypeError."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"column {column!r}: bytes that are not UTF-8") from error
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"column {column!r} must hold a string, got {type(value).__name__} {value!r:.60}")
