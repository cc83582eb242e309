"""Open-vocabulary segmentation benchmarks of CLIP models on masked regions.

Protocols:
- `gt-masks`: every ground-truth class region of an image is a masked region; CLIP classifies it
  against all class names (14 templates). Reports region accuracy and the mIoU of the map the
  predictions paint (the method's "GT masks + CLIP" oracle).
- `two-stage`: the method's semantic inference. The image is resized as the method tests it; a
  MaskFormer's soft masks of every query (no score threshold, area filter or NMS) are binarized
  for CLIP, each region is classified (softmax at temperature 100), optionally ensembled with the
  generator, and per pixel the class with the largest sum of mask x probability wins. Generators
  without soft masks give their binary masks after the engine's post-processing.
- `two-stage-binary`: the engine's variant: binary masks after the engine's post-processing.

The ensemble is p ~ p_gen^(1 - lambda) * p_clip^lambda over every class (`generator_distribution`
says what a closed-vocabulary generator's probability of a class it does not name is), in one of
two forms (`ENSEMBLE_FORMS`): renormalized per region, or as the method's released code computes
it (nothing renormalized, so a likely no-object query weighs less in the painted sum). Pixels no mask touches count as misses. Regions are prepared as for mining
(`--region-preprocessing engine`) or as the method's adapter does (`method`). With
`encoder="single-pass"`, each image is one forward with a region token per region instead
(dataengine/single_pass.py), as `dataengine mine --encoder single-pass` does.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from tqdm import tqdm

from dataengine.config import ENCODERS, ConfigError, MineConfig, ProposalConfig, from_dict
from dataengine.records import Proposals, Sample
from dataengine.regions import normalize, prepare_regions
from dataengine.single_pass import SinglePassEncoder, patch_coverage

from .config import ENSEMBLE_FORMS, PROTOCOLS
from .datasets import IGNORE, SegSample, open_dataset
from .metrics import ConfusionMatrix
from .models import EvalModel

TEMPERATURE = 100.0
REGION_PREPROCESSING = {
    "engine": "as mining: 8-bit fill at the CLIP mean, antialiased bicubic resize (PIL's)",
    "method": "the method's adapter: normalized first, outside set to 0, F.interpolate bicubic without antialiasing"}
# Test-time resizing of the method (detectron2's ResizeShortestEdge, bilinear): shortest side 640,
# longest at most 2560 (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST of its Swin-B + ViT-L/14 config); one
# config evaluates every dataset, VOC included (its R101c + ViT-B/16 model uses 512 / 2048).
TEST_SIZES = {"ade20k-150": (640, 2560), "ade20k-847": (640, 2560), "pc-59": (640, 2560), "pc-459": (640, 2560),
              "voc": (640, 2560), "coco-object": (640, 2560)}


@dataclass
class BenchConfig:
    dataset: str
    root: str
    protocol: str = "gt-masks"
    proposals: str = "classical"
    ensemble_lambda: float | None = None  # the method: 0.7 ADE, 0.6 Pascal Context, 0.45 VOC (ENSEMBLE_PRESETS)
    limit: int | None = None
    batch_size: int = 32
    device: str = "cpu"
    progress: bool = True
    encoder: str = "crops"  # crops | single-pass, as match.encoder
    test_resize: bool = True  # two-stage protocols: resize images as the method tests them (TEST_SIZES)
    test_short_side: int | None = None  # ... to this shortest side; None: the dataset's
    test_max_size: int | None = None  # ... and at most this longest side; None: the dataset's
    single_pass_long_side: int | None = None  # as match.single_pass_long_side
    single_pass_blocks: int | None = None  # as match.single_pass_blocks
    region_preprocessing: str = "engine"  # engine (as mining: 8-bit, antialiased) | method (the method's adapter)
    mask_threshold: float | None = None  # two-stage: binarizes a MaskFormer's soft masks; None: the engine's 0.4
    ensemble_form: str = "renormalized"  # renormalized | released (as the method's released code; see ensemble_as_released)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.ensemble_lambda is not None and not 0 <= self.ensemble_lambda <= 1:
            raise ConfigError(f"--ensemble-lambda: must be in [0, 1], got {self.ensemble_lambda}")
        if self.ensemble_form not in ENSEMBLE_FORMS:
            raise ConfigError(f"--ensemble-form: expected one of {', '.join(ENSEMBLE_FORMS)}, got {self.ensemble_form!r}")
        if self.ensemble_form == "released" and self.protocol != "two-stage":
            raise ConfigError("--ensemble-form released: the released code's form needs --protocol two-stage "
                              "(a MaskFormer's soft masks and its no-object probabilities)")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit: must be at least 1, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size: must be at least 1, got {self.batch_size}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"--encoder: expected one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.region_preprocessing not in REGION_PREPROCESSING:
            raise ConfigError(f"--region-preprocessing: expected one of {', '.join(REGION_PREPROCESSING)}, "
                              f"got {self.region_preprocessing!r}")
        for flag, value in (("--single-pass-long-side", self.single_pass_long_side),
                            ("--single-pass-blocks", self.single_pass_blocks), ("--test-short-side", self.test_short_side),
                            ("--test-max-size", self.test_max_size)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag}: must be at least 1, got {value}")


def ensemble(p_clip: torch.Tensor, p_gen: torch.Tensor, weight: float) -> torch.Tensor:
    """The method's geometric ensemble of CLIP and generator class probabilities."""
    return p_gen.clamp_min(1e-12) ** (1 - weight) * p_clip.clamp_min(1e-12) ** weight


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(R, H, W) bool -> (R, 4) int64 (x, y, w, h) boxes; every mask must be non-empty."""
    corners = torchvision.ops.masks_to_boxes(masks).long()  # inclusive (x0, y0, x1, y1)
    return torch.cat([corners[:, :2], corners[:, 2:] - corners[:, :2] + 1], 1)


def region_crops(image: np.ndarray, masks: torch.Tensor, size: int, fill, device: str,
                 batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked crops (uint8) and crop masks of all regions of one image, prepared on `device` (the
    batched path on a GPU) in chunks of `batch_size` regions."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(device)
    masks = masks.to(device)
    boxes = tight_boxes(masks)
    chunks = [prepare_regions(pixels, masks[start : start + batch_size], boxes[start : start + batch_size], size, fill)
              for start in range(0, len(masks), batch_size)]
    if not chunks:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8), torch.zeros((0, size, size), dtype=torch.bool)
    return torch.cat([c for c, _ in chunks]), torch.cat([m for _, m in chunks])


def classify_crops(model: EvalModel, crops: torch.Tensor, crop_masks: torch.Tensor, classes: torch.Tensor,
                   batch_size: int, normalized: bool = False) -> torch.Tensor:
    """(R, C) class probabilities of prepared region crops (uint8, or already `normalized` floats)."""
    clip = model.clip

    def pixels(start: int) -> torch.Tensor:
        chunk = crops[start : start + batch_size]
        return chunk if normalized else normalize(chunk, clip.mean, clip.std)

    probabilities = [
        (TEMPERATURE * model.encode_regions(pixels(start), crop_masks[start : start + batch_size]) @ classes.t())
        .softmax(-1).cpu()
        for start in range(0, len(crops), batch_size)]
    return torch.cat(probabilities) if probabilities else torch.zeros(0, len(classes))


def method_region_crops(image: np.ndarray, masks: torch.Tensor, size: int, mean, std,
                        device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Region crops as the method's released adapter makes them: the image normalized first, the
    outside of the mask set to 0 (the mean), the tight box cropped and resized by `F.interpolate`
    bicubic without antialiasing (in float: no 8-bit rounding); crop masks nearest."""
    import torch.nn.functional as F

    pixels = normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device), mean, std)[0]
    masks = masks.to(device)
    crops = torch.empty((len(masks), 3, size, size), device=device)
    crop_masks = torch.empty((len(masks), size, size), dtype=torch.bool, device=device)
    for region, (x, y, w, h) in enumerate(tight_boxes(masks).tolist()) if len(masks) else []:
        mask = masks[region, y : y + h, x : x + w]
        crop = pixels[:, y : y + h, x : x + w] * mask
        crops[region] = F.interpolate(crop[None], size=(size, size), mode="bicubic", align_corners=False)[0]
        crop_masks[region] = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0] > 0
    return crops, crop_masks


def gt_regions(sample: SegSample) -> tuple[torch.Tensor, np.ndarray]:
    """One region per ground-truth class present: (R, H, W) masks and their class ids."""
    present = np.unique(sample.labels)
    present = present[present != IGNORE]
    labels = torch.from_numpy(sample.labels)
    masks = torch.stack([labels == c for c in present]) if len(present) else torch.zeros((0, *labels.shape), dtype=torch.bool)
    return masks, present


def paint(masks: torch.Tensor, probabilities: torch.Tensor, chunk: int = 16384) -> np.ndarray:
    """MaskFormer's semantic inference: per pixel, the class with the largest sum over masks of mask
    value x class probability. `masks`: (R, H, W) bool, or float in [0, 1] (soft masks). -1 where
    every mask is 0 (no proposal covers the pixel). Pixels go in chunks: (classes x pixels) stays
    small even for 847 classes on large images."""
    height, width = masks.shape[1:]
    prediction = torch.full((height * width,), -1, dtype=torch.long)
    if len(masks):
        flat = masks.reshape(len(masks), -1)
        by_class = probabilities.float().t()  # (C, R)
        for start in range(0, height * width, chunk):
            part = flat[:, start : start + chunk].float()
            best = (by_class @ part).argmax(0)
            prediction[start : start + chunk] = torch.where(part.sum(0) > 0, best, -1)
    return prediction.reshape(height, width).numpy()


def paint_disjoint(masks: torch.Tensor, classes: np.ndarray) -> np.ndarray:
    """Non-overlapping masks (ground-truth regions) painted with one class each; -1 elsewhere."""
    prediction = np.full(masks.shape[1:], -1, dtype=np.int64)
    for mask, label in zip(masks.numpy(), classes, strict=True):
        prediction[mask] = label
    return prediction


class ProposalSource:
    """The engine's proposal stage (generator + shared post-processing) on benchmark images; with
    `soft_masks`, a MaskFormer's soft masks of every query instead."""

    def __init__(self, spec: str, device: str, mask_threshold: float | None = None):
        from dataengine.stages import ProposalStage

        settings = {"generator": spec}
        if mask_threshold is not None:
            settings["mask_threshold"] = mask_threshold
        config = MineConfig(proposals=from_dict(ProposalConfig, settings, "proposals"))
        self.stage = ProposalStage(config, device)
        if self.stage.generator_type.needs_annotations:
            raise ConfigError("--proposals: annotations needs instance annotations; benchmarks use "
                              "class-agnostic generators (classical, hf:...)")
        self.stage.setup()

    @property
    def scores_classes(self) -> bool:
        return self.stage.generator.scores_classes

    def soft_masks(self, image: np.ndarray, keep_empty: bool = False
                   ) -> tuple[torch.Tensor | None, torch.Tensor, np.ndarray | None]:
        """(soft masks (R, H, W) float or None, binary masks (R, H, W) for CLIP, class probabilities
        (no-object excluded, not renormalized) or None). A MaskFormer: the mask probabilities of
        every query, whatever its score, with no area filter and no NMS, run at this image's size,
        binarized at the mask threshold for CLIP as the method does (queries with an empty binary
        mask are dropped unless `keep_empty`). Other generators have no soft masks: their binary
        masks after the engine's post-processing."""
        generator = self.stage.generator
        height, width = image.shape[:2]
        if hasattr(generator, "soft_masks"):
            record = Sample(key="", image_id="", source="", captions=[], image=image, height=height, width=width)
            soft, class_probs = generator.soft_masks(record, resize=False)
            binary = soft > generator.config.mask_threshold
            kept = torch.ones(len(binary), dtype=torch.bool) if keep_empty else binary.flatten(1).any(1)
            return soft[kept], binary[kept], class_probs[kept.numpy()]
        binary, proposals = self.proposals(SegSample("", image, np.zeros((height, width), dtype=np.int64)))
        return None, binary, proposals.class_probs if proposals is not None else None

    def proposals(self, sample: SegSample) -> tuple[torch.Tensor, Proposals | None]:
        height, width = sample.image.shape[:2]
        record = Sample(key=sample.key, image_id=sample.key, source=sample.key, captions=[], image=sample.image,
                        height=height, width=width)
        self.stage.process_batch([record])
        if record.proposals is None or not len(record.proposals):
            return torch.zeros((0, height, width), dtype=torch.bool), None
        return torch.from_numpy(record.proposals.decode()), record.proposals


def _label_key(name: str) -> str:
    """Class names compared across vocabularies: 'sky-other-merged' and 'Sky' are the same class."""
    name = name.split(",")[0].strip().lower()
    for suffix in ("-other-merged", "-merged", "-other", "-stuff"):
        name = name.removesuffix(suffix)
    return name.replace("_", " ").replace("-", " ")


def generator_columns(labels: tuple[str, ...], class_names: list[str]) -> list[int | None]:
    """For each benchmark class, the generator label column with the same name, if any."""
    index = {_label_key(label): i for i, label in enumerate(labels)}
    return [index.get(_label_key(name)) for name in class_names]


# The method's ensemble weight of CLIP per dataset, as its released evaluation commands set it
# (facebookresearch/ov-seg, GETTING_STARTED.md and configs/): 0.7 for ADE (the config's own value),
# 0.6 for Pascal Context, 0.45 for Pascal VOC (the method reference's "0.6 for Pascal" does not hold
# for VOC). COCO has no published weight.
ENSEMBLE_PRESETS = {"ade20k-150": 0.7, "ade20k-847": 0.7, "pc-59": 0.6, "pc-459": 0.6, "voc": 0.45}


def generator_distribution(class_probs: np.ndarray, columns: list[int | None]) -> torch.Tensor:
    """(R, L) generator probabilities over its own labels (no-object excluded, summing to 1) ->
    (R, C) probabilities over every benchmark class, summing to 1.

    A class the generator names takes the probability of that label. The mass left on labels that
    name no benchmark class is spread evenly over the classes the generator does not name: a
    closed-vocabulary generator says of those only that they are none of its own classes. When it
    names every class, the named probabilities are renormalized."""
    probs = torch.from_numpy(np.asarray(class_probs, dtype=np.float64)).clamp_min(0.0)
    probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-12)
    known = [c for c, column in enumerate(columns) if column is not None]
    unknown = [c for c, column in enumerate(columns) if column is None]
    result = torch.zeros((len(probs), len(columns)), dtype=torch.float64)
    result[:, known] = probs[:, [columns[c] for c in known]]
    if unknown:
        leftover = (1.0 - result.sum(1, keepdim=True)).clamp_min(0.0)
        result[:, unknown] = leftover / len(unknown)
    total = result.sum(1, keepdim=True)
    uniform = torch.full_like(result, 1.0 / len(columns))  # all its mass outside the benchmark: no opinion
    return torch.where(total > 0, result / total.clamp_min(1e-12), uniform).float()


def ensemble_with_generator(p_clip: torch.Tensor, class_probs: np.ndarray, columns: list[int | None],
                            weight: float) -> torch.Tensor:
    """The method's geometric ensemble over every class, p ~ p_gen^(1 - weight) * p_clip^weight,
    renormalized per region (`class_probs`: the generator's, over its own labels): weight 0 is the
    generator alone, 1 is CLIP alone."""
    p_gen = generator_distribution(class_probs, columns)
    mixed = ensemble(p_clip.float(), p_gen, weight)
    return mixed / mixed.sum(1, keepdim=True)


def ensemble_as_released(p_clip: torch.Tensor, class_probs: np.ndarray, columns: list[int | None],
                         weight: float) -> torch.Tensor:
    """The ensemble as ov-seg's released `semantic_inference` computes it: p_gen^(1 - weight) *
    p_clip^weight, not renormalized. `class_probs`: the generator's softmax over its labels with
    no-object dropped and not renormalized, so p_gen sums to 1 - p(no-object) and a likely no-object
    query weighs less in the painted sum. Rows of p_clip that CLIP did not classify (an empty binary
    mask) are 1, as the released code fills them."""
    raw = torch.from_numpy(np.asarray(class_probs, dtype=np.float64))
    p_gen = generator_distribution(class_probs, columns).double() * raw.sum(1, keepdim=True)
    return ensemble(p_clip.double(), p_gen, weight).float()


def resize_shortest_edge(image: np.ndarray, short: int, longest: int) -> np.ndarray:
    """The image resized (PIL bilinear, as detectron2's ResizeShortestEdge) so that its shortest side
    is `short` and its longest at most `longest`; unchanged when it already is."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = short / min(height, width)
    if max(height, width) * scale > longest:
        scale = longest / max(height, width)
    size = (max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5)))  # detectron2's rounding
    if size == (width, height):
        return image
    return np.array(Image.fromarray(image).resize(size, Image.BILINEAR))  # writable, for torch


@dataclass
class Regions:
    """The regions of one benchmark image: the image they were found on (resized for two-stage),
    their binary masks for CLIP, their true classes (gt-masks), the soft masks to paint (two-stage)
    and the generator's class probabilities (for the ensemble)."""

    image: np.ndarray
    masks: torch.Tensor
    classes: np.ndarray | None = None
    soft: torch.Tensor | None = None
    class_probs: np.ndarray | None = None

    @property
    def classified(self) -> torch.Tensor:
        """The regions CLIP classifies: those with a non-empty binary mask."""
        return self.masks.flatten(1).any(1) if len(self.masks) else torch.zeros(0, dtype=torch.bool)

    def painted(self, shape: tuple[int, int]) -> torch.Tensor:
        """The masks to paint, at the labels' size: bilinear upsampling commutes with the painting's
        sum of mask x probability, so this is the method's resizing of the class scores."""
        masks = self.soft if self.soft is not None else self.masks
        if tuple(masks.shape[1:]) == tuple(shape):
            return masks
        if not len(masks):
            return torch.zeros((0, *shape))
        resized = torch.nn.functional.interpolate(masks[None].float(), size=shape, mode="bilinear", align_corners=False)
        return resized[0]


class Benchmark:
    def __init__(self, config: BenchConfig, models: list[EvalModel]):
        if not models:
            raise ConfigError("bench: no model to evaluate")
        self.config = config
        self.models = models
        self.dataset = open_dataset(config.dataset, config.root)
        self.single_pass = {m.label: SinglePassEncoder(m.clip, config.single_pass_blocks, config.single_pass_long_side)
                            for m in models if config.encoder == "single-pass"}  # refused before proposals load
        self.proposals = (ProposalSource(config.proposals, config.device, config.mask_threshold)
                          if config.protocol != "gt-masks" else None)
        self.columns = None
        if config.ensemble_lambda is not None:
            self.columns = self._ensemble_columns()

    def _ensemble_columns(self) -> list[int | None]:
        config = self.config
        if self.proposals is None or not self.proposals.scores_classes:
            raise ConfigError(f"--ensemble-lambda: needs a two-stage protocol and a generator with class scores "
                              f"(hf: MaskFormer / Mask2Former); {config.proposals} has none")
        labels = self.proposals.stage.generator.class_labels
        columns = generator_columns(labels, self.dataset.classes)
        if not any(column is not None for column in columns):
            raise ConfigError(f"--ensemble-lambda: none of the {len(labels)} labels of {config.proposals} names a "
                              f"{config.dataset} class, so there is nothing to ensemble")
        return columns

    def run(self) -> dict:
        config, names = self.config, self.dataset.classes
        text = {m.label: m.class_embeddings(names) for m in self.models}
        matrices = {m.label: ConfusionMatrix(len(names)) for m in self.models}
        region_hits = {label: np.zeros(len(names), dtype=np.int64) for label in matrices}  # per true class
        region_counts = np.zeros(len(names), dtype=np.int64)
        regions_total, images = 0, 0
        total = min(len(self.dataset), config.limit or len(self.dataset))
        started = time.perf_counter()
        bar = tqdm(total=total, desc=f"{config.dataset} {config.protocol}", unit="img", disable=not config.progress)
        for sample in self.dataset:
            if images >= total:
                break
            regions = self._regions(sample)
            masks, region_classes = regions.masks, regions.classes
            regions_total += len(masks)
            if region_classes is not None:
                np.add.at(region_counts, region_classes, 1)
            crops = {}  # models that share input size, fill and device share the crops
            for model in self.models:
                probabilities = self._probabilities(model, regions, text[model.label], crops)
                if region_classes is not None:
                    predicted = probabilities.argmax(1).numpy()
                    np.add.at(region_hits[model.label], region_classes[predicted == region_classes], 1)
                    matrices[model.label].update(paint_disjoint(masks, predicted), sample.labels)
                else:
                    matrices[model.label].update(paint(regions.painted(sample.labels.shape), probabilities),
                                                 sample.labels)
            images += 1
            bar.update(1)
        bar.close()
        return self._report(matrices, region_hits, region_counts, regions_total, images, time.perf_counter() - started)

    def _probabilities(self, model: EvalModel, regions: Regions, classes: torch.Tensor, crops: dict) -> torch.Tensor:
        """(R, C) class probabilities of every region: CLIP's, ensembled with the generator's when asked."""
        ensembled = self.columns is not None and regions.class_probs is not None
        if not (ensembled and self.config.ensemble_form == "released"):
            probabilities = self._classify(model, regions.image, regions.masks, classes, crops)
            if ensembled:
                probabilities = ensemble_with_generator(probabilities, regions.class_probs, self.columns,
                                                        self.config.ensemble_lambda)
            return probabilities
        classified = regions.classified
        p_clip = torch.ones((len(regions.masks), len(classes)))
        p_clip[classified] = self._classify(model, regions.image, regions.masks[classified], classes, crops)
        return ensemble_as_released(p_clip, regions.class_probs, self.columns, self.config.ensemble_lambda)

    def _classify(self, model: EvalModel, image: np.ndarray, masks: torch.Tensor, classes: torch.Tensor,
                  crops: dict) -> torch.Tensor:
        """(R, C) class probabilities of an image's regions, by the configured encoder."""
        config, clip = self.config, model.clip
        if model.label in self.single_pass:
            encoder = self.single_pass[model.label]
            pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(clip.device)
            features = encoder(pixels, patch_coverage(masks, encoder.grid(*masks.shape[1:]), clip.device))
            return (TEMPERATURE * features.to(classes.device) @ classes.t()).softmax(-1).cpu()
        if config.region_preprocessing == "method":
            key = ("method", clip.image_size, clip.mean, clip.std, clip.device)
            if key not in crops:
                crops[key] = method_region_crops(image, masks, *key[1:])
            return classify_crops(model, *crops[key], classes, config.batch_size, normalized=True)
        key = (clip.image_size, clip.fill_rgb, clip.device)
        if key not in crops:
            crops[key] = region_crops(image, masks, *key, config.batch_size)
        return classify_crops(model, *crops[key], classes, config.batch_size)

    def _regions(self, sample: SegSample) -> Regions:
        """gt-masks: the ground-truth class regions. two-stage-binary: the generator's proposals after
        the engine's post-processing. two-stage: every proposal, soft masks where the generator has
        them. Both two-stage protocols work on the image resized as the method tests it."""
        if self.proposals is None:
            masks, classes = gt_regions(sample)
            return Regions(sample.image, masks, classes)
        image = self._test_image(sample.image)
        if self.config.protocol == "two-stage":
            keep_empty = self.columns is not None and self.config.ensemble_form == "released"
            soft, masks, class_probs = self.proposals.soft_masks(image, keep_empty)
            return Regions(image, masks, None, soft, class_probs)
        masks, proposals = self.proposals.proposals(SegSample(sample.key, image, sample.labels))
        return Regions(image, masks, None, None, proposals.class_probs if proposals is not None else None)

    def _test_image(self, image: np.ndarray) -> np.ndarray:
        size = self.test_size
        return image if size is None else resize_shortest_edge(image, *size)

    @property
    def test_size(self) -> tuple[int, int] | None:
        """(shortest side, longest side at most) of two-stage's test-time resizing, or None."""
        config = self.config
        if not config.test_resize or config.protocol == "gt-masks":
            return None
        default = TEST_SIZES.get(config.dataset)
        if default is None and config.test_short_side is None:
            return None
        short, longest = default or (config.test_short_side, None)
        return (config.test_short_side or short, config.test_max_size or longest or 10**9)

    def _report(self, matrices, region_hits, region_counts, regions_total, images, seconds) -> dict:
        config = self.config
        models = {}
        for model in self.models:
            result = matrices[model.label].results(self.dataset.classes)
            if config.protocol == "gt-masks":
                hits = region_hits[model.label]
                result["region_accuracy"] = round(100 * hits.sum() / max(1, region_counts.sum()), 4)
                result["per_class_region_accuracy"] = {
                    name: round(100 * hits[c] / region_counts[c], 4)
                    for c, name in enumerate(self.dataset.classes) if region_counts[c]}
                result["per_class_regions"] = {name: [int(hits[c]), int(region_counts[c])]
                                               for c, name in enumerate(self.dataset.classes) if region_counts[c]}
            result["clip"] = model.clip.spec
            result["prompts"] = model.prompts is not None
            models[model.label] = result
        return {"dataset": config.dataset, "root": str(config.root), "protocol": config.protocol,
                "proposals": config.proposals if config.protocol != "gt-masks" else None,
                "ensemble_lambda": config.ensemble_lambda,
                "encoder": {"name": config.encoder, "single_pass_long_side": config.single_pass_long_side,
                            "single_pass_blocks": config.single_pass_blocks},
                "settings": protocol_settings(config, len(self.dataset.classes), self.test_size),
                "classes": len(self.dataset.classes), "images": images, "regions": regions_total,
                "seconds": round(seconds, 2), "models": models}


MASKS = {"gt-masks": "ground-truth class regions",
         "two-stage": "a MaskFormer's soft masks of every query (no score threshold, area filter or NMS; binarized "
                      "at the mask threshold for CLIP); other generators' binary masks after the engine's "
                      "post-processing",
         "two-stage-binary": "the generator's binary masks after the engine's area filter and NMS"}


def protocol_settings(config: BenchConfig, classes: int, test_size: tuple[int, int] | None) -> dict:
    """Everything that decides what a figure means: two reports are comparable only when these match."""
    return {"dataset": config.dataset, "classes": classes, "protocol": config.protocol,
            "masks": MASKS[config.protocol],
            "proposals": config.proposals if config.protocol != "gt-masks" else None,
            "ensemble_lambda": config.ensemble_lambda,
            "ensemble_form": config.ensemble_form if config.ensemble_lambda is not None else None,
            "encoder": config.encoder,
            "single_pass_long_side": config.single_pass_long_side, "single_pass_blocks": config.single_pass_blocks,
            "limit": config.limit, "temperature": TEMPERATURE,
            "region_preprocessing": config.region_preprocessing if config.encoder == "crops" else None,
            "mask_threshold": (config.mask_threshold if config.mask_threshold is not None else
                               ProposalConfig().mask_threshold) if config.protocol != "gt-masks" else None,
            "test_size": list(test_size) if test_size else None, "uncovered_pixels": "misses"}


def compare_reports(paths: list[str], allow_mismatch: bool = False) -> str:
    """A side-by-side table of the models of several bench reports; reports whose protocol settings
    differ are refused (or, with `allow_mismatch`, compared with a warning naming the differences)."""
    reports = []
    for path in paths:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as error:
            raise ConfigError(f"--compare: cannot read {path} ({type(error).__name__})") from None
    if not all(isinstance(report, dict) and isinstance(report.get("models"), dict) for report in reports):
        raise ConfigError("--compare: a file that is not a dataengine bench report (no models)")
    settings = [report.get("settings") for report in reports]
    if any(s is None for s in settings):
        raise ConfigError("--compare: a report without protocol settings (written before they were recorded): "
                          "run the benchmark again")
    differences = sorted({key for s in settings[1:] for key in set(s) | set(settings[0]) if s.get(key) != settings[0].get(key)})
    lines = []
    if differences:
        detail = "; ".join(f"{key}: " + " vs ".join(json.dumps(s.get(key)) for s in settings) for key in differences)
        if not allow_mismatch:
            raise ConfigError(f"--compare: the reports were measured under different protocols ({detail}); "
                              "their numbers do not mean the same thing (--allow-mismatch compares them anyway)")
        lines.append(f"WARNING: different protocols: {detail}")
    lines.append(f"{'report':<28}{'model':<20}{'mIoU':>8}{'pixel acc':>11}{'region acc':>12}")
    for path, report in zip(paths, reports, strict=True):
        for label, result in report["models"].items():
            lines.append(f"{Path(path).name:<28}{label:<20}{_cell(result.get('mIoU')):>8}"
                         f"{_cell(result.get('pixel_accuracy')):>11}{_cell(result.get('region_accuracy')):>12}")
    return "\n".join(lines)


def format_table(report: dict) -> str:
    columns = ["mIoU", "pixel_accuracy", "mean_class_accuracy"]
    if report["protocol"] == "gt-masks":
        columns.append("region_accuracy")
    header = f"{report['dataset']} ({report['classes']} classes), {report['protocol']}"
    if report.get("proposals"):
        header += f" with {report['proposals']} proposals"
    header += f": {report['images']} images, {report['regions']} regions"
    width = max(12, *(len(label) for label in report["models"]))
    lines = [header, f"{'model':<{width}} " + " ".join(f"{c:>19}" for c in columns)]
    for label, result in report["models"].items():
        cells = " ".join(f"{_cell(result.get(c)):>19}" for c in columns)
        lines.append(f"{label:<{width}} {cells}")
    return "\n".join(lines)


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_report(report: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
