"""`dataengine inspect OUT`: counts, reject reasons, top nouns and a few sample pairs."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .config import ConfigError


def read_columns(folder: Path, columns: list[str], what: str = "inspect") -> pa.Table | None:
    """Only the columns a summary needs, so that inspecting a corpus of millions of pairs stays cheap."""
    files = sorted(str(path) for path in folder.glob("*.parquet"))
    if not files:
        return None
    try:
        return pq.read_table(files, columns=columns)
    except (pa.ArrowException, OSError, KeyError) as error:
        raise ConfigError(f"{what}: cannot read {folder}/*.parquet: {_one_line(error)}") from None


def read_json(path: Path, what: str = "inspect"):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"{what}: {path} is damaged ({type(error).__name__}: {_one_line(error)})") from None


def _one_line(error: BaseException) -> str:
    return terminal_safe(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)[:200]


def terminal_safe(text) -> str:
    """`text` with control and format characters (ANSI escapes, bidi overrides, NUL, newlines)
    shown as escapes, so that a caption cannot drive the terminal it is printed on."""
    text = str(text)
    return "".join(
        char if unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Zl", "Zp")
        else char.encode("unicode_escape", "backslashreplace").decode("ascii") for char in text
    )


def _counts(column: pa.ChunkedArray, top: int | None = None) -> list[tuple[str, int]]:
    counts = pc.value_counts(column).to_pylist()
    ranked = sorted(((c["values"], c["counts"]) for c in counts), key=lambda item: (-item[1], item[0]))
    return ranked[:top] if top is not None else ranked


def summarize(out: str | Path, top: int = 20, samples: int = 5) -> dict:
    out = Path(out)
    if not (out / "stats").is_dir():
        raise ConfigError(f"inspect: {out} is not a mined corpus (no stats/ folder)")
    manifest_path = out / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.exists() else None
    if manifest is not None and not isinstance(manifest, dict):
        raise ConfigError(f"inspect: {manifest_path} is damaged (not a JSON object)")
    pairs = read_columns(out / "index", ["key", "image_key", "noun", "score", "margin", "caption"])
    rejects = read_columns(out / "rejects", ["level", "reason"])
    shards = sorted(out.glob("stats/*.json"))
    summary = {
        "out": str(out),
        "complete": manifest is not None,
        "models": manifest.get("models") if manifest else None,
        "shards": len(shards),
        "images": sum(_shard_images(path) for path in shards),
        "images_with_pairs": 0, "pairs": 0, "distinct_nouns": 0, "top_nouns": [], "sample_pairs": [],
        "rejects": {"image": {}, "noun": {}},
    }
    if pairs is not None:
        summary.update(
            images_with_pairs=pc.count_distinct(pairs["image_key"]).as_py(),
            pairs=pairs.num_rows,
            distinct_nouns=pc.count_distinct(pairs["noun"]).as_py(),
            top_nouns=_counts(pairs["noun"], top),
            sample_pairs=pairs.slice(0, samples).select(["key", "noun", "score", "margin", "caption"]).to_pylist(),
        )
    if rejects is not None:
        for level in ("image", "noun"):
            chosen = rejects.filter(pc.equal(rejects["level"], level))
            summary["rejects"][level] = dict(_counts(chosen["reason"]))
    return summary


def _shard_images(path: Path) -> int:
    stats = read_json(path)
    if not isinstance(stats, dict) or not isinstance(stats.get("images"), int):
        raise ConfigError(f"inspect: {path} is damaged (no image count)")
    return stats["images"]


def inspect_corpus(out: str | Path, top: int = 20, samples: int = 5, as_json: bool = False) -> str:
    summary = summarize(out, top, samples)
    if as_json:
        return json.dumps(summary, indent=2)
    safe = terminal_safe
    lines = [
        f"corpus {safe(summary['out'])}" + ("" if summary["complete"] else "  (incomplete: no manifest.json yet)"),
        f"  images {summary['images']}  with pairs {summary['images_with_pairs']}  pairs {summary['pairs']}  "
        f"distinct nouns {summary['distinct_nouns']}  shards {summary['shards']}",
    ]
    if summary["models"]:
        lines.append("  models " + "  ".join(f"{safe(k)}={safe(v)}" for k, v in dict(summary["models"]).items()
                                             if v is not None and k != "files_sha256"))
    for level, reasons in summary["rejects"].items():
        lines.append(f"  rejected {level}s: " + (", ".join(f"{safe(r)} {n}" for r, n in reasons.items()) or "none"))
    lines.append("  top nouns: " + ", ".join(f"{safe(noun)} {n}" for noun, n in summary["top_nouns"]))
    lines.append("  sample pairs:")
    for pair in summary["sample_pairs"]:
        margin = "-" if pair["margin"] is None else f"{pair['margin']:.3f}"
        lines.append(f"    {safe(pair['key'])}  {safe(repr(pair['noun']))}  score {pair['score']:.3f}  margin {margin}  "
                     f"| {safe(pair['caption'])}")
    return "\n".join(lines)
