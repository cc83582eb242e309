"""`dataengine report` on a synthetic corpus of a million pairs: wall time and peak memory, one run.

The corpus has the real layout and schemas: index and rejects parquet files with every column
(a Zipf-distributed noun vocabulary, random scores and margins, one real RLE mask), a manifest,
and tar shards holding each pair's KEY.jpg (real shards also hold KEY.json, KEY.mask.png and
KEY.txt, which the report skips over the same way). The report runs in its own process, as a
user would run it; its peak resident memory is read from the operating system.

    python bench/bench_report.py                        # 1,000,000 pairs in 400 shards
    python bench/bench_report.py --pairs 100000 --shards 40
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from common import offline_environment

PAIRS_PER_IMAGE = 4


def tiny_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 60, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def mask_counts() -> str:
    from pycocotools import mask as mask_utils

    mask = np.zeros((480, 640), dtype=np.uint8, order="F")
    mask[100:300, 200:400] = 1
    return mask_utils.encode(mask)["counts"].decode()


def write_corpus(folder: Path, pairs: int, shards: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dataengine.schema import arrow_schema

    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"noun{i}" for i in range(5000)])
    for name in ("index", "rejects", "shards", "stats"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    per_shard, jpeg, counts = pairs // shards, tiny_jpeg(), mask_counts()
    for shard in range(shards):
        start = shard * per_shard
        numbers = np.arange(start, start + per_shard)
        images, nouns = numbers // PAIRS_PER_IMAGE, numbers % PAIRS_PER_IMAGE
        keys = [f"{i:012d}_n{n:04d}" for i, n in zip(images, nouns, strict=True)]
        words = vocabulary[np.minimum(rng.zipf(1.3, per_shard) - 1, len(vocabulary) - 1)]
        columns = {
            "key": keys, "shard": np.full(per_shard, shard), "image_key": [k[:12] for k in keys],
            "image_id": [str(i) for i in images], "source": [f"/nonexistent/{i}.jpg" for i in images],
            "image_height": np.full(per_shard, 480), "image_width": np.full(per_shard, 640),
            "caption_id": [str(i) for i in images], "caption": [f"a photo of a {w}" for w in words], "noun": words,
            "span_start": np.full(per_shard, 12), "span_end": np.full(per_shard, 17), "mentions": np.ones(per_shard, int),
            "score": rng.normal(0.25, 0.05, per_shard), "margin": rng.exponential(0.03, per_shard),
            "proposal_id": nouns, "proposal_score": rng.random(per_shard), "generator": ["classical"] * per_shard,
            "box": [[200, 100, 200, 200]] * per_shard, "area": np.full(per_shard, 40000),
            "mask_counts": [counts] * per_shard, "clip_model": ["ViT-B-16@openai"] * per_shard,
            "clip_prompts": [None] * per_shard}
        pq.write_table(pa.table(columns, schema=arrow_schema("index")), folder / "index" / f"pairs-{shard:06d}.parquet")
        rejects = {name: [None] * (per_shard // 10) for name in arrow_schema("rejects").names}
        rejects.update(key=keys[: per_shard // 10], level=["noun"] * (per_shard // 10), shard=[shard] * (per_shard // 10),
                       reason=rng.choice(["below_min_score", "not_mutual_best"], per_shard // 10).tolist(),
                       stage=["match"] * (per_shard // 10), image_key=[k[:12] for k in keys[: per_shard // 10]],
                       image_id=["0"] * (per_shard // 10), source=["x"] * (per_shard // 10), detail=[""] * (per_shard // 10))
        pq.write_table(pa.table(rejects, schema=arrow_schema("rejects")), folder / "rejects" / f"rejects-{shard:06d}.parquet")
        with tarfile.open(folder / "shards" / f"pairs-{shard:06d}.tar", "w") as tar:
            for key in keys:
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = len(jpeg)
                tar.addfile(info, io.BytesIO(jpeg))
    images = pairs // PAIRS_PER_IMAGE
    (folder / "manifest.json").write_text(json.dumps({
        "counts": {"images": images, "images_with_pairs": images, "pairs": pairs, "rejected_images": 0,
                   "rejected_nouns": pairs // 10, "reject_reasons": {}},
        "models": {"clip": "ViT-B-16@openai", "proposals": "classical", "nouns": "core_web_sm-3.8.0", "prompts": None},
        "config": {"match": {"clip": "ViT-B-16@openai", "encoder": "crops"}, "proposals": {"generator": "classical"}},
        "stages": {"match": {"seconds": 1.0}}, "wall_seconds": 1.0, "images_per_second": 1.0, "pairs_per_second": 1.0,
        "source": {"type": "coco"}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=400)
    parser.add_argument("--keep", metavar="DIR", help="write the corpus here and keep it (default: a temp folder)")
    args = parser.parse_args()
    offline_environment()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as temporary:
        folder = Path(args.keep or temporary) / "corpus"
        started = time.perf_counter()
        write_corpus(folder, args.pairs, args.shards)
        print(f"synthetic corpus: {args.pairs} pairs in {args.shards} shards, written in "
              f"{time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dataengine", "report", str(folder), "--html", str(folder / "report.html")],
                       check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        print(f"dataengine report: {seconds:.1f} s, peak memory (RSS) {peak:.0f} MiB, "
              f"page {(folder / 'report.html').stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
