"""The corpus-level post-pass, `dataengine filter CORPUS --out DIR`: the filters that need every pair
of the corpus at once, applied in this order to each noun's pairs:

0. `--min-noun-margin M`: a noun whose pairs have a median margin (best minus second-best cosine)
   under M drops all of them (below_noun_margin). CLIP cannot tell that noun's region from the
   others: in the controlled world such nouns' pairs are mostly wrong. Pairs without a margin (one
   proposal only) do not count towards the median; a noun with none keeps its pairs. A better
   model (for example the loop's adapted one) raises the margins and brings the noun back;
1. `--noun-quantile Q`: of its n pairs, a noun drops its floor(Q n) lowest-scoring, keeping those
   above its own Q-quantile (below_noun_quantile). A noun CLIP scores low everywhere keeps its best
   pairs, where a global --min-score would drop it whole;
2. `--max-pairs-per-noun N`: a noun keeps at most its N best pairs (over_max_pairs_per_noun), so
   that a few frequent nouns do not swamp the corpus.

"Best" is by score, ties broken by pair key: the choice depends on the corpus alone, not on the
executor that mined it or the order its shards were written. The output has the corpus's layout:
its shard i holds the pairs of the corpus's shard i that stay (tar members copied byte for byte)
and their index rows; its rejects are the corpus's plus one noun-level row per dropped pair and an
image-level `no_pairs` row for an image left with none, so that every input stays accounted for.
Exactly once and resumable as mining is (`dataengine.output`): a rerun of the same command keeps
the finished shards; other settings into the same --out need --overwrite.
"""

from __future__ import annotations

import json
import math
import tarfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .checkpoint import file_sha256
from .config import ConfigError, FilterConfig
from .output import RUN_FILE, OutputFolder
from .reasons import (
    BELOW_NOUN_MARGIN,
    BELOW_NOUN_QUANTILE,
    IMAGE_LEVEL,
    NO_PAIRS,
    NOUN_LEVEL,
    OVER_MAX_PAIRS_PER_NOUN,
)
from .schema import arrow_schema
from .write import SHARD_INDEX, SHARD_REJECTS, SHARD_STATS, SHARD_TAR, CorpusWriter, Models

STAGE = "filter"
DECISION_COLUMNS = ["key", "noun", "score", "margin"]


def read_finished_manifest(corpus: Path) -> dict:
    try:
        return json.loads((corpus / "manifest.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"filter: {corpus} is not a finished corpus (no manifest.json): finish mining it first, "
                          "by rerunning its dataengine mine command") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"filter: cannot read {corpus / 'manifest.json'} ({type(error).__name__})") from None


def decide(table: pa.Table, config: FilterConfig) -> dict[str, tuple[str, str]]:
    """Pair key -> (reason, detail) for every pair the filters drop; `table` holds key, noun, score, margin."""
    keys, nouns, scores, margins = (table.column(name).to_pylist() for name in DECISION_COLUMNS)
    by_noun: dict[str, list[int]] = {}
    for row, noun in enumerate(nouns):
        by_noun.setdefault(noun, []).append(row)
    dropped: dict[str, tuple[str, str]] = {}
    for noun, rows in by_noun.items():
        if config.min_noun_margin is not None:
            median = median_margin([margins[row] for row in rows])
            if median is not None and median < config.min_noun_margin:
                for row in rows:
                    dropped[keys[row]] = (BELOW_NOUN_MARGIN, f"{noun!r}: median margin {median:.4f} of its {len(rows)} "
                                          f"pairs is under {config.min_noun_margin}")
                continue
        ranked = sorted(rows, key=lambda row: (-scores[row], keys[row]))
        if config.noun_quantile is not None:
            keep = len(ranked) - math.floor(config.noun_quantile * len(ranked))
            lowest_kept = scores[ranked[keep - 1]]
            for row in ranked[keep:]:
                dropped[keys[row]] = (BELOW_NOUN_QUANTILE, f"score {scores[row]:.4f}: {noun!r} keeps its {keep} best of "
                                      f"{len(ranked)} pairs (quantile {config.noun_quantile}, lowest kept {lowest_kept:.4f})")
            ranked = ranked[:keep]
        if config.max_pairs_per_noun is not None:
            for row in ranked[config.max_pairs_per_noun :]:
                dropped[keys[row]] = (OVER_MAX_PAIRS_PER_NOUN, f"score {scores[row]:.4f}: {noun!r} keeps its "
                                      f"{config.max_pairs_per_noun} best pairs")
    return dropped


def median_margin(margins: list[float | None]) -> float | None:
    """The median of the margins that exist (a pair with one proposal has none); None if none do."""
    known = sorted(m for m in margins if m is not None and not math.isnan(m))
    if not known:
        return None
    middle = len(known) // 2
    return known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2


class FilteredWriter(CorpusWriter):
    """Writes the filtered copy of one corpus shard, with the files and the commit order of mining."""

    def write_filtered_shard(self, corpus: Path, entry: dict, dropped: dict[str, tuple[str, str]]) -> dict:
        shard = int(entry["shard"])
        index = pq.read_table(corpus / entry["index"])
        drop = [key in dropped for key in index.column("key").to_pylist()]
        kept = index.filter(pa.array([not d for d in drop], type=pa.bool_()))
        removed = index.filter(pa.array(drop, type=pa.bool_())).to_pylist()
        new_rejects = [_pair_reject(row, *dropped[row["key"]]) for row in removed]
        new_rejects += _emptied_images(index.to_pylist(), set(kept.column("image_key").to_pylist()), removed, dropped)
        rejects = pa.concat_tables([pq.read_table(corpus / entry["rejects"], schema=arrow_schema("rejects")),
                                    pa.Table.from_pylist(new_rejects, schema=arrow_schema("rejects"))])
        written = {"tar": self._copy_tar(shard, corpus / entry["tar"], set(kept.column("key").to_pylist())),
                   "index": self._write_arrow(SHARD_INDEX.format(shard), kept),
                   "rejects": self._write_arrow(SHARD_REJECTS.format(shard), rejects)}
        source = json.loads((corpus / SHARD_STATS.format(shard)).read_text())
        emptied = sum(1 for row in new_rejects if row["level"] == IMAGE_LEVEL)
        stats = {**source, **written,
                 "images_with_pairs": len(set(kept.column("image_key").to_pylist())), "pairs": kept.num_rows,
                 "rejected_images": source["rejected_images"] + emptied,
                 "rejected_nouns": source["rejected_nouns"] + len(removed),
                 "reject_reasons": dict(sorted(Counter(rejects.column("reason").to_pylist()).items())),
                 "nouns": dict(Counter(kept.column("noun").to_pylist()).most_common())}
        self._commit(SHARD_STATS.format(shard), json.dumps(stats, indent=1, sort_keys=True).encode())
        return stats

    def _copy_tar(self, shard: int, source: Path, keep: set[str]) -> str:
        name = SHARD_TAR.format(shard)
        temporary = self._temporary(name)
        found = set()
        with tarfile.open(source) as reader, tarfile.open(temporary, "w") as sink:
            for member in reader:
                key = Path(member.name).name.split(".", 1)[0]  # webdataset's key: the name up to its first dot
                if member.isfile() and key in keep:
                    sink.addfile(member, reader.extractfile(member))
                    found.add(key)
        if found != keep:
            raise ConfigError(f"filter: {source} lacks pairs its index lists ({', '.join(sorted(keep - found)[:3])}); "
                              "the corpus is damaged: mine it again")
        return self._rename(temporary, name)

    def _write_arrow(self, name: str, table: pa.Table) -> str:
        temporary = self._temporary(name)
        pq.write_table(table, temporary)
        return self._rename(temporary, name)


REJECT_FROM_INDEX = ("key", "shard", "image_key", "image_id", "source", "caption_id", "noun", "span_start", "span_end",
                     "score", "margin")


def _pair_reject(row: dict, reason: str, detail: str) -> dict:
    return {**{name: row[name] for name in REJECT_FROM_INDEX}, "level": NOUN_LEVEL, "reason": reason,
            "detail": detail, "stage": STAGE}


def _emptied_images(rows: list[dict], still_paired: set[str], removed: list[dict],
                    dropped: dict[str, tuple[str, str]]) -> list[dict]:
    """An image-level no_pairs row for each image of the shard that the filters left without pairs."""
    reasons: dict[str, Counter] = {}
    for row in removed:
        if row["image_key"] not in still_paired:
            reasons.setdefault(row["image_key"], Counter())[dropped[row["key"]][0]] += 1
    first = {row["image_key"]: row for row in reversed(rows)}
    return [{"key": image_key, "level": IMAGE_LEVEL, "reason": NO_PAIRS, "stage": STAGE,
             "detail": f"all {sum(counts.values())} pair(s) dropped by dataengine filter: "
                       + ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items())),
             **{name: first[image_key][name] for name in ("shard", "image_key", "image_id", "source")},
             "caption_id": None, "noun": None, "span_start": None, "span_end": None, "score": None, "margin": None}
            for image_key, counts in sorted(reasons.items())]


def filter_job(config: FilterConfig, corpus: Path, manifest: dict, version: str) -> dict:
    """The fingerprint of a filter run: its settings and the corpus it reads, by the digest of the
    corpus's run.json (its mining job's fingerprint: the manifest changes with wall times alone)."""
    return {"kind": "filter", "settings": {"min_noun_margin": config.min_noun_margin,
                                           "noun_quantile": config.noun_quantile,
                                           "max_pairs_per_noun": config.max_pairs_per_noun},
            "corpus": {"path": str(corpus.resolve()), "job_sha256": file_sha256(corpus / RUN_FILE)},
            "dataengine_version": version, "shards": len(manifest["shards"])}


def filter_corpus(config: FilterConfig, overwrite: bool = False) -> dict:
    """Run (or resume) the post-pass; returns the filtered corpus's manifest, also written to --out."""
    from tqdm.auto import tqdm

    from .pipeline import package_versions

    config.validate()
    corpus = Path(config.corpus)
    manifest = read_finished_manifest(corpus)
    entries = sorted(manifest["shards"], key=lambda entry: entry["shard"])
    table = pq.read_table([str(corpus / entry["index"]) for entry in entries], columns=DECISION_COLUMNS,
                          schema=arrow_schema("index"))
    dropped = decide(table, config)
    output = OutputFolder(config.out)
    with output.locked():
        output.prepare(filter_job(config, corpus, manifest, package_versions()["dataengine"] or "unknown"), overwrite)
        done = output.done_shards()
        writer = FilteredWriter(output.path, Models(**manifest["models"]))
        start = time.perf_counter()
        for entry in tqdm(entries, unit="shard", desc="filter", disable=not config.progress, dynamic_ncols=True):
            if entry["shard"] not in done:
                output.clear_shard(entry["shard"])
                writer.write_filtered_shard(corpus, entry, dropped)
        result = filtered_manifest(config, manifest, writer.read_stats([entry["shard"] for entry in entries]),
                                   table.num_rows, len(done), time.perf_counter() - start)
        writer.write_manifest(result)
    return result


def filtered_manifest(config: FilterConfig, source: dict, stats: list[dict], corpus_pairs: int, resumed: int,
                      wall: float) -> dict:
    """The corpus's manifest with this run's counts and shards, and what the filter did."""
    counts = {key: sum(s[key] for s in stats)
              for key in ("images", "images_with_pairs", "rejected_images", "pairs", "rejected_nouns")}
    reasons: Counter = Counter()
    for shard in stats:
        reasons.update(shard["reject_reasons"])
    counts["reject_reasons"] = dict(sorted(reasons.items()))
    return {**source, "config": {**source["config"], "out": str(config.out)}, "counts": counts,
            "shards": [{key: s[key] for key in ("shard", "images", "pairs", "tar", "index", "rejects")} for s in stats],
            "resumed_shards": resumed, "wall_seconds": round(wall, 3),
            "images_per_second": round(counts["images"] / wall, 3) if wall > 0 else 0.0,
            "pairs_per_second": round(counts["pairs"] / wall, 3) if wall > 0 else 0.0,
            "filter": {"corpus": str(Path(config.corpus).resolve()), "min_noun_margin": config.min_noun_margin,
                       "noun_quantile": config.noun_quantile,
                       "max_pairs_per_noun": config.max_pairs_per_noun, "corpus_pairs": corpus_pairs,
                       "kept_pairs": counts["pairs"]}}
