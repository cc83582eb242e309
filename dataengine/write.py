"""Output: WebDataset shards, parquet index and rejects, per-shard stats and the run manifest.

Each shard's files are written under `OUT/_tmp/` and renamed into place when complete; the
shard's `stats/%06d.json` is written last and marks it done (img2dataset, datatrove).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from .keys import pair_key
from .reasons import IMAGE_LEVEL
from .records import Pair, Reject, Sample
from .schema import SCHEMA_VERSION, arrow_schema
from .stage import stage_stats

SHARD_TAR = "shards/pairs-{:06d}.tar"
SHARD_INDEX = "index/pairs-{:06d}.parquet"
SHARD_REJECTS = "rejects/rejects-{:06d}.parquet"
SHARD_STATS = "stats/{:06d}.json"
TMP_DIR = "_tmp"
SCORE_DECIMALS = 6  # scores are stored rounded so that output does not depend on batch composition


@dataclass(frozen=True)
class Models:
    clip: str  # the --clip spec as given: NAME[@WEIGHTS] or a finetune output folder
    proposals: str
    nouns: str
    prompts: str | None = None  # the mask prompt file applied to every region, if any
    files_sha256: dict | None = None  # of a finetune folder's weights and prompts (None otherwise)


def temporary_name(name: str) -> str:
    """Where the file `name` (relative to OUT) is written before its rename: OUT/_tmp/<this>."""
    return name.replace("/", "__")


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), SCORE_DECIMALS)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_mask_png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def encode_pair(pair: Pair, quality: int) -> None:
    """Set the pair's shard files (JPEG crop, PNG mask) and release its arrays."""
    if pair.files is None:
        pair.files = (encode_jpeg(pair.crop, quality), encode_mask_png(pair.crop_mask))
        pair.crop = pair.crop_mask = None


def pair_metadata(sample: Sample, pair: Pair, models: Models) -> dict:
    """KEY.json of one pair (schemas/pair.schema.json)."""
    proposals = sample.proposals
    rle = proposals.rles[pair.proposal_index]
    return {
        "schema_version": SCHEMA_VERSION,
        "key": pair.key,
        "image_key": sample.key,
        "image_id": sample.image_id,
        "source": sample.source,
        "image_size": [sample.height, sample.width],
        "caption_id": pair.noun.caption_id,
        "caption": sample.caption_text(pair.noun.caption_id),
        "noun": pair.noun.noun,
        "span": [pair.noun.start, pair.noun.end],
        "mentions": pair.noun.mentions,
        "score": _round(pair.score),
        "margin": _round(pair.margin),
        "proposal_id": pair.proposal_index,
        "proposal_score": _round(proposals.scores[pair.proposal_index]),
        "generator": proposals.generator,
        "mask": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "box": [int(v) for v in proposals.boxes_xywh[pair.proposal_index]],
        "area": int(proposals.areas[pair.proposal_index]),
        "models": {"clip": models.clip, "proposals": models.proposals, "nouns": models.nouns, "prompts": models.prompts},
    }


def index_row(meta: dict, shard: int) -> dict:
    return {
        "key": meta["key"], "shard": shard, "image_key": meta["image_key"], "image_id": meta["image_id"],
        "source": meta["source"], "image_height": meta["image_size"][0], "image_width": meta["image_size"][1],
        "caption_id": meta["caption_id"], "caption": meta["caption"], "noun": meta["noun"],
        "span_start": meta["span"][0], "span_end": meta["span"][1], "mentions": meta["mentions"],
        "score": meta["score"], "margin": meta["margin"], "proposal_id": meta["proposal_id"],
        "proposal_score": meta["proposal_score"], "generator": meta["generator"], "box": meta["box"],
        "area": meta["area"], "mask_counts": meta["mask"]["counts"], "clip_model": meta["models"]["clip"],
        "clip_prompts": meta["models"]["prompts"],
    }


def reject_rows(sample: Sample, shard: int) -> list[dict]:
    rows = [_reject_row(sample, reject, shard) for reject in sample.noun_rejects]
    if sample.reject is not None:
        rows.append(_reject_row(sample, sample.reject, shard))
    return rows


def _reject_row(sample: Sample, reject: Reject, shard: int) -> dict:
    noun = reject.noun
    key = sample.key if reject.level == IMAGE_LEVEL or noun is None else pair_key(sample.key, sample.nouns.index(noun))
    return {
        "key": key, "level": reject.level, "reason": reject.reason, "detail": reject.detail, "stage": reject.stage,
        "shard": shard, "image_key": sample.key, "image_id": sample.image_id, "source": sample.source,
        "caption_id": noun.caption_id if noun else None, "noun": noun.noun if noun else None,
        "span_start": noun.start if noun else None, "span_end": noun.end if noun else None,
        "score": _round(reject.score), "margin": _round(reject.margin),
    }


class CorpusWriter:
    """Writes shards of one output folder; knows nothing of stages or executors."""

    def __init__(self, out: str | Path, models: Models, jpeg_quality: int = 95):
        self.out = Path(out)
        self.models = models
        self.jpeg_quality = jpeg_quality
        for folder in ("shards", "index", "rejects", "stats", TMP_DIR):
            (self.out / folder).mkdir(parents=True, exist_ok=True)

    def write_shard(self, shard: int, samples: list[Sample]) -> dict:
        metas = [(sample, pair, pair_metadata(sample, pair, self.models)) for sample in samples for pair in sample.pairs]
        rejects = [row for sample in samples for row in reject_rows(sample, shard)]
        written = {  # every shard gets its tar, index and rejects, empty or not: patterns have no gaps, and
            # readers of an empty table still get its typed columns (schemas/rejects.parquet.json)
            "tar": self._write_tar(shard, metas),
            "index": self._write_table(SHARD_INDEX.format(shard), [index_row(m, shard) for _, _, m in metas], "index"),
            "rejects": self._write_table(SHARD_REJECTS.format(shard), rejects, "rejects"),
        }
        stats = {
            "shard": shard,
            "images": len(samples),
            "images_with_pairs": sum(1 for s in samples if s.pairs),
            "pairs": len(metas),
            "rejected_images": sum(1 for s in samples if s.reject is not None),
            "rejected_nouns": sum(len(s.noun_rejects) for s in samples),
            "nouns_matched": sum(len(s.nouns) for s in samples if s.pairs or s.noun_rejects),
            "reject_reasons": dict(sorted(Counter(row["reason"] for row in rejects).items())),
            "nouns": dict(Counter(pair.noun.noun for _, pair, _ in metas).most_common()),
            **written,
            "stages": stage_stats(samples),
        }
        self._commit(SHARD_STATS.format(shard), json.dumps(stats, indent=1, sort_keys=True).encode())
        return stats

    def _write_tar(self, shard: int, metas) -> str:
        name = SHARD_TAR.format(shard)
        temporary = self._temporary(name)
        with open(temporary, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=0) as sink:
            for _sample, pair, meta in metas:
                encode_pair(pair, self.jpeg_quality)
                sink.write({
                    "__key__": pair.key,
                    "jpg": pair.files[0],
                    "mask.png": pair.files[1],
                    "txt": pair.noun.noun.encode("utf-8"),
                    "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
                })
        return self._rename(temporary, name)

    def _write_table(self, name: str, rows: list[dict], schema: str) -> str:
        temporary = self._temporary(name)
        pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema(schema)), temporary)
        return self._rename(temporary, name)

    def _commit(self, name: str, data: bytes) -> str:
        temporary = self._temporary(name)
        temporary.write_bytes(data)
        return self._rename(temporary, name)

    def _temporary(self, name: str) -> Path:
        return self.out / TMP_DIR / temporary_name(name)

    def _rename(self, temporary: Path, name: str) -> str:
        os.replace(temporary, self.out / name)
        return name

    def read_stats(self, shards) -> list[dict]:
        return [json.loads((self.out / SHARD_STATS.format(shard)).read_text()) for shard in shards]

    def write_manifest(self, manifest: dict) -> Path:
        self._commit("manifest.json", json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
        with contextlib.suppress(OSError):
            (self.out / TMP_DIR).rmdir()  # empty by now: every temporary was renamed into place
        return self.out / "manifest.json"
