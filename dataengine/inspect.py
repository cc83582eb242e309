"""`dataengine inspect OUT`: counts, reject reasons, top nouns and a few sample pairs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from .config import ConfigError


def _read_tables(folder: Path):
    files = sorted(folder.glob("*.parquet"))
    return pq.read_table(files).to_pylist() if files else []


def summarize(out: str | Path, top: int = 20, samples: int = 5) -> dict:
    out = Path(out)
    if not (out / "stats").is_dir():
        raise ConfigError(f"inspect: {out} is not a mined corpus (no stats/ folder)")
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    pairs = _read_tables(out / "index")
    rejects = _read_tables(out / "rejects")
    shards = sorted(out.glob("stats/*.json"))
    images = sum(json.loads(path.read_text())["images"] for path in shards)
    return {
        "out": str(out),
        "complete": manifest is not None,
        "models": manifest["models"] if manifest else None,
        "shards": len(shards),
        "images": images,
        "images_with_pairs": len({row["image_key"] for row in pairs}),
        "pairs": len(pairs),
        "distinct_nouns": len({row["noun"] for row in pairs}),
        "rejects": {level: dict(Counter(r["reason"] for r in rejects if r["level"] == level).most_common())
                    for level in ("image", "noun")},
        "top_nouns": Counter(row["noun"] for row in pairs).most_common(top),
        "sample_pairs": [{k: row[k] for k in ("key", "noun", "score", "margin", "caption")} for row in pairs[:samples]],
    }


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
