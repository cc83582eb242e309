"""One mining run: source -> partitions -> stages (under an executor) -> writer -> manifest."""

from __future__ import annotations

import itertools
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path

from .config import ConfigError, MineConfig
from .executors import merge_stage_stats, partition
from .executors.local import LocalExecutor
from .schema import SCHEMA_VERSION
from .sources import create_source
from .stages import build_stages
from .write import CorpusWriter, Models

VERSIONED_PACKAGES = ("dataengine", "torch", "torchvision", "open_clip_torch", "spacy", "pycocotools", "webdataset",
                      "pyarrow", "numpy", "pillow", "scikit-image", "transformers", "datasets", "ray")
OUTPUT_ENTRIES = ("shards", "index", "rejects", "stats", "manifest.json", "_tmp")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; a folder with no finished shard is simply cleaned."""
    finished = (out / "manifest.json").exists() or any((out / "stats").glob("*.json"))
    if finished and not overwrite:
        raise ConfigError(f"--out: {out} already holds a mined corpus; pass --overwrite or choose another folder")
    existing = [name for name in OUTPUT_ENTRIES if (out / name).exists()]
    for name in existing:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


class Progress:
    """A tqdm bar over images with pairs so far; silent when disabled."""

    def __init__(self, total: int | None, enabled: bool):
        from tqdm.auto import tqdm

        self.pairs = 0
        self.bar = tqdm(total=total, unit="img", desc="mining", disable=not enabled, dynamic_ncols=True)

    def __call__(self, batch) -> None:
        self.pairs += sum(len(sample.pairs) for sample in batch)
        self.bar.set_postfix(pairs=self.pairs, refresh=False)
        self.bar.update(len(batch))

    def close(self) -> None:
        self.bar.close()


def mine(config: MineConfig, overwrite: bool = False) -> dict:
    """Run the job described by `config`; returns the manifest (also written to OUT/manifest.json)."""
    from .clip import resolve_device

    config.validate()
    device = resolve_device(config.device)
    stages = build_stages(config, device)
    source = create_source(config.source)
    by_name = {stage.name: stage for stage in stages}
    generator = by_name["proposals"].generator
    if generator.needs_annotations and getattr(source, "instances", None) is None:
        raise ConfigError("--proposals annotations: needs instance masks: use --source coco with --instances FILE")
    for stage in stages:  # load models first: a bad model spec fails before anything is written
        stage.setup()
    out = Path(config.out)
    prepare_output(out, overwrite)
    models = Models(clip=config.match.clip, proposals=generator.model_id, nouns=by_name["nouns"].model_id)
    writer = CorpusWriter(out, models, config.write.jpeg_quality)
    samples = itertools.islice(iter(source), config.limit) if config.limit else iter(source)
    total = _known_length(source, config.limit)
    progress = Progress(total, config.progress)
    start = time.perf_counter()
    try:
        shard_stats = LocalExecutor(stages, writer, config.images_per_batch).run(
            partition(samples, config.write.samples_per_shard), progress)
    finally:
        progress.close()
    manifest = build_manifest(config, models, source.describe(), shard_stats, time.perf_counter() - start)
    writer.write_manifest(manifest)
    return manifest


def _known_length(source, limit: int | None) -> int | None:
    try:
        length = len(source)
    except TypeError:
        return limit
    return min(length, limit) if limit else length


def build_manifest(config: MineConfig, models: Models, source: dict, shard_stats: list[dict], wall: float) -> dict:
    counts = {key: sum(s[key] for s in shard_stats)
              for key in ("images", "images_with_pairs", "rejected_images", "pairs", "rejected_nouns")}
    reasons: dict[str, int] = {}
    for stats in shard_stats:
        for reason, count in stats["reject_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    counts["reject_reasons"] = dict(sorted(reasons.items()))
    return {
        "schema_version": SCHEMA_VERSION,
        "dataengine_version": package_versions()["dataengine"] or "unknown",
        "config": config.to_dict(),
        "versions": package_versions(),
        "models": {"clip": models.clip, "proposals": models.proposals, "nouns": models.nouns},
        "source": source,
        "counts": counts,
        "shards": [{key: s[key] for key in ("shard", "images", "pairs", "tar", "index", "rejects")} for s in shard_stats],
        "stages": merge_stage_stats([s["stages"] for s in shard_stats]),
        "wall_seconds": round(wall, 3),
        "images_per_second": round(counts["images"] / wall, 3) if wall > 0 else 0.0,
        "pairs_per_second": round(counts["pairs"] / wall, 3) if wall > 0 else 0.0,
    }
