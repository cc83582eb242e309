"""One mining run: source -> shards -> stages (under an executor) -> writer -> manifest."""

from __future__ import annotations

import logging
import platform
import time
from importlib import metadata
from pathlib import Path

from .config import ConfigError, MineConfig
from .executors import create_executor, plan_shards
from .output import OutputFolder, fingerprint
from .proposals import create_generator
from .schema import SCHEMA_VERSION
from .sources import create_source
from .stage import merge_stage_stats
from .write import CorpusWriter, Models

log = logging.getLogger(__name__)
VERSIONED_PACKAGES = ("dataengine", "torch", "torchvision", "open_clip_torch", "spacy", "pycocotools", "webdataset",
                      "pyarrow", "numpy", "pillow", "scikit-image", "transformers", "datasets", "ray")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class Progress:
    """A tqdm bar over images, with pairs and shards done; silent when disabled."""

    def __init__(self, total: int, shards: int, enabled: bool):
        from tqdm.auto import tqdm

        self.pairs, self.shards, self.total_shards = 0, 0, shards
        self.bar = tqdm(total=total, unit="img", desc="mining", disable=not enabled, dynamic_ncols=True)

    def images(self, batch) -> None:
        self.pairs += sum(len(sample.pairs) for sample in batch)
        self.bar.set_postfix(pairs=self.pairs, shards=f"{self.shards}/{self.total_shards}", refresh=False)
        self.bar.update(len(batch))

    def shard_done(self) -> None:
        self.shards += 1
        self.bar.set_postfix(pairs=self.pairs, shards=f"{self.shards}/{self.total_shards}")

    def close(self) -> None:
        self.bar.close()


def job_models(config: MineConfig, generator) -> Models:
    """The models a job uses, checked before any work starts: a missing model is a clear error up
    front (CLIP weights are fetched into the local cache where a network exists)."""
    from .clip import check_clip_spec, fetch_clip_weights, finetune_run
    from .nouns import NounExtractor
    from .prompts import read_prompt_file
    from .single_pass import check_single_pass_model, refuse_mask_prompts

    run = finetune_run(config.match.clip)
    spec = run.spec if run else config.match.clip
    name, _ = check_clip_spec(spec)
    if run and run.prompts:
        read_prompt_file(run.prompts, "--clip")
    if config.match.encoder == "single-pass":
        refuse_mask_prompts(bool(run and run.prompts))
        check_single_pass_model(name, config.match.single_pass_blocks)
    extractor = NounExtractor(config.nouns)
    # Pin the spaCy package this machine resolved, so that every worker of a cluster uses the same one.
    config.nouns.spacy_model = config.nouns.spacy_model or extractor.package_name
    fetch_clip_weights(spec)
    return Models(clip=config.match.clip, proposals=generator.model_id, nouns=extractor.model_name,
                  prompts=run.prompts if run else None, files_sha256=run.digests() if run else None)


VOCABULARY_CHUNK = 1024  # samples per step of the vocabulary's pass over the captions


def resolve_vocabulary(config: MineConfig, source, total: int) -> None:
    """Fill `match.vocabulary_words` from `match.vocabulary`, before the run is fingerprinted:
    `corpus` is every noun the noun stage finds in the first `total` inputs' captions (a pass over
    the captions alone, no image is read), FILE one noun per line (blank lines and #-comments
    skipped, lower-cased)."""
    match = config.match
    if not match.vocabulary or match.vocabulary_words:
        return
    if match.vocabulary == "corpus":
        match.vocabulary_words = corpus_vocabulary(config, source, total)
    else:
        match.vocabulary_words = read_vocabulary(match.vocabulary)
    if not match.vocabulary_words:
        raise ConfigError(f"--vocabulary {match.vocabulary}: no nouns")
    log.info("vocabulary: %d nouns from %s", len(match.vocabulary_words), match.vocabulary)


def corpus_vocabulary(config: MineConfig, source, total: int) -> list[str]:
    from tqdm.auto import tqdm

    from .stages import NounStage

    stage = NounStage(config)
    nouns: set[str] = set()
    with tqdm(total=total, unit="img", desc="vocabulary", disable=not config.progress, dynamic_ncols=True) as bar:
        for start in range(0, total, VOCABULARY_CHUNK):
            samples = stage(source.read(start, min(start + VOCABULARY_CHUNK, total)))
            nouns.update(noun.noun for sample in samples if sample.alive for noun in sample.nouns)
            bar.update(len(samples))
    return sorted(nouns)


def read_vocabulary(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--vocabulary: cannot read {path} ({type(error).__name__}: {error})") from None
    words = (line.split("#", 1)[0].strip().lower() for line in text.splitlines())
    return sorted({word for word in words if word})


def mine(config: MineConfig, overwrite: bool = False) -> dict:
    """Run (or resume) the job described by `config`; returns the manifest, also written to OUT."""
    config.validate()
    generator = create_generator(config.proposals.generator, config.proposals, "cpu")  # checks the spec only
    source = create_source(config.source)
    if generator.needs_annotations and getattr(source, "instances", None) is None:
        raise ConfigError("--proposals annotations: needs instance masks: use --source coco with --instances FILE")
    models = job_models(config, generator)
    if "@" not in config.match.clip and not Path(config.match.clip).expanduser().is_dir():
        log.warning("--clip %s has no pretrained weights: seeded random initialisation, the pairs show the "
                    "machinery only", config.match.clip)
    shards = plan_shards(min(len(source), config.limit or len(source)), config.write.samples_per_shard)
    resolve_vocabulary(config, source, shards[-1].stop if shards else 0)
    executor = create_executor(config)
    output = OutputFolder(config.out)
    try:
        with output.locked():
            executor.setup()  # resolves the device; models load (or Ray starts) before the folder changes
            device_kind = "cuda" if executor.device.startswith("cuda") else "cpu"
            job = fingerprint(config, vars(models), package_versions()["dataengine"] or "unknown", source,
                              shards[-1].stop if shards else 0, device_kind)
            output.prepare(job, overwrite)
            done = output.done_shards()
            todo = [spec for spec in shards if spec.shard not in done]
            for spec in todo:
                output.clear_shard(spec.shard)
            writer = CorpusWriter(output.path, models, config.write.jpeg_quality)
            progress = Progress(sum(spec.size for spec in todo), len(todo), config.progress)
            start = time.perf_counter()
            try:
                executor.run(source, todo, writer, progress)
            finally:
                progress.close()
            wall = time.perf_counter() - start
            stats = writer.read_stats([spec.shard for spec in shards])
            manifest = build_manifest(config, models, source.describe(), stats, wall, {spec.shard for spec in todo})
            writer.write_manifest(manifest)
    finally:
        executor.close()
    return manifest


def build_manifest(config: MineConfig, models: Models, source: dict, shard_stats: list[dict], wall: float,
                   processed_shards: set[int]) -> dict:
    """The run summary, from the shards' stats files; throughput counts the shards this run processed."""
    counts = {key: sum(s[key] for s in shard_stats)
              for key in ("images", "images_with_pairs", "rejected_images", "pairs", "rejected_nouns")}
    reasons: dict[str, int] = {}
    for stats in shard_stats:
        for reason, count in stats["reject_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    counts["reject_reasons"] = dict(sorted(reasons.items()))
    processed = [s for s in shard_stats if s["shard"] in processed_shards]
    images, pairs = sum(s["images"] for s in processed), sum(s["pairs"] for s in processed)
    return {
        "schema_version": SCHEMA_VERSION,
        "dataengine_version": package_versions()["dataengine"] or "unknown",
        "config": config.to_dict(),
        "versions": package_versions(),
        "models": vars(models),
        "source": source,
        "counts": counts,
        "shards": [{key: s[key] for key in ("shard", "images", "pairs", "tar", "index", "rejects")} for s in shard_stats],
        "resumed_shards": len(shard_stats) - len(processed),
        "stages": merge_stage_stats([s["stages"] for s in shard_stats]),
        "wall_seconds": round(wall, 3),
        "images_per_second": round(images / wall, 3) if wall > 0 else 0.0,
        "pairs_per_second": round(pairs / wall, 3) if wall > 0 else 0.0,
    }
