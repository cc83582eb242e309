"""`dataengine inspect OUT`: counts, reject reasons, top nouns and a few sample pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .config import ConfigError


def _read_columns(folder: Path, columns: list[str]) -> pa.Table | None:
    """Only the columns a summary needs, so that inspecting a corpus of millions of pairs stays cheap."""
    files = sorted(str(path) for path in folder.glob("*.parquet"))
    return pq.read_table(files, columns=columns) if files else None


def _counts(column: pa.ChunkedArray, top: int | None = None) -> list[tuple[str, int]]:
    counts = pc.value_counts(column).to_pylist()
    ranked = sorted(((c["values"], c["counts"]) for c in counts), key=lambda item: (-item[1], item[0]))
    return ranked[:top] if top is not None else ranked


def summarize(out: str | Path, top: int = 20, samples: int = 5) -> dict:
    out = Path(out)
    if not (out / "stats").is_dir():
        raise ConfigError(f"inspect: {out} is not a mined corpus (no stats/ folder)")
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    pairs = _read_columns(out / "index", ["key", "image_key", "noun", "score", "margin", "caption"])
    rejects = _read_columns(out / "rejects", ["level", "reason"])
    shards = sorted(out.glob("stats/*.json"))
    summary = {
        "out": str(out),
        "complete": manifest is not None,
        "models": manifest["models"] if manifest else None,
        "shards": len(shards),
        "images": sum(json.loads(path.read_text())["images"] for path in shards),
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


def inspect_corpus(out: str | Path, top: int = 20, samples: int = 5, as_json: bool = False) -> str:
    summary = summarize(out, top, samples)
    if as_json:
        return json.dumps(summary, indent=2)
    lines = [
        f"corpus {summary['out']}" + ("" if summary["complete"] else "  (incomplete: no manifest.json yet)"),
        f"  images {summary['images']}  with pairs {summary['images_with_pairs']}  pairs {summary['pairs']}  "
        f"distinct nouns {summary['distinct_nouns']}  shards {summary['shards']}",
    ]
    if summary["models"]:
        lines.append("  models " + "  ".join(f"{k}={v}" for k, v in summary["models"].items()))
    for level, reasons in summary["rejects"].items():
        lines.append(f"  rejected {level}s: " + (", ".join(f"{r} {n}" for r, n in reasons.items()) or "none"))
    lines.append("  top nouns: " + ", ".join(f"{noun} {n}" for noun, n in summary["top_nouns"]))
    lines.append("  sample pairs:")
    for pair in summary["sample_pairs"]:
        margin = "-" if pair["margin"] is None else f"{pair['margin']:.3f}"
        lines.append(f"    {pair['key']}  {pair['noun']!r}  score {pair['score']:.3f}  margin {margin}  | {pair['caption']}")
    return "\n".join(lines)
