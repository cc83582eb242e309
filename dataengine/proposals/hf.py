"""Learned class-agnostic proposals through Hugging Face transformers.

- MaskFormer / Mask2Former (`AutoModelForUniversalSegmentation`): the class labels do not take
  part in mining; a query's confidence is its best class probability with the no-object class
  excluded (as in MaskFormer's own instance inference), and its class probabilities (no-object
  excluded, renormalized) travel with the mask for the benchmarks' ensemble. Mask logits are brought back to the image's own size,
  passed through a sigmoid and binarized at `proposals.mask_threshold`, a few queries at a time
  (at most `mask_pixels_per_chunk` float pixels at once: Q x H x W logits of a large image would
  take gigabytes).
- SAM: the transformers "mask-generation" pipeline (automatic mask generation on a point grid),
  with `proposals.mask_threshold` (as the logit of that probability) and SAM's own quality
  thresholds (`proposals.hf.pred_iou_thresh`, `proposals.hf.stability_score_thresh`).

MODEL is a hub id (downloaded where a network exists) or a local folder from `save_pretrained`.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import DEFAULT_MASK_PIXELS, ConfigError, ProposalConfig, masks_per_chunk
from ..hub import hub_access
from ..records import Proposals, Sample
from . import ProposalGenerator

MASKFORMER_TYPES = ("maskformer", "mask2former")


def _model_type(model: str, revision: str | None) -> str:
    try:
        from transformers import AutoConfig

        with hub_access():
            return AutoConfig.from_pretrained(model, revision=revision).model_type
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"--proposals: cannot load hf:{model} ({type(error).__name__}); give a local folder "
            "written by save_pretrained, or a hub id on a machine with network access"
        ) from error


def _logit(probability: float) -> float:
    probability = min(max(probability, 1e-6), 1 - 1e-6)
    return math.log(probability / (1 - probability))


def _joined(parts: list[Proposals], name: str, class_labels=None) -> Proposals:
    """One Proposals of several encoded chunks, in order."""
    probs = None
    if parts and parts[0].class_probs is not None:
        probs = np.concatenate([part.class_probs for part in parts])
    scores = np.concatenate([part.scores for part in parts]) if parts else np.zeros(0)
    return Proposals([rle for part in parts for rle in part.rles], scores, name, probs, class_labels)


class HFProposals(ProposalGenerator):
    name = "hf"
    loads_model = True
    mask_pixels = DEFAULT_MASK_PIXELS  # the run's mask_pixels_per_chunk, set by the proposal stage

    @classmethod
    def create(cls, argument: str, config: ProposalConfig, device: str) -> ProposalGenerator:
        """`hf:MODEL`: a MaskFormer, Mask2Former or SAM checkpoint, told apart by its config."""
        if not argument:
            raise ConfigError("--proposals: hf needs a model, e.g. hf:facebook/maskformer-swin-base-coco or hf:/path/to/model")
        model_type = _model_type(argument, config.hf.revision)
        if model_type in MASKFORMER_TYPES:
            return MaskFormerProposals(argument, config, device)
        if model_type == "sam":
            return SamProposals(argument, config, device)
        raise ConfigError(f"--proposals: hf:{argument} is a {model_type!r} model; supported: "
                          f"{', '.join(MASKFORMER_TYPES)}, sam")

    def __init__(self, model: str, config: ProposalConfig, device: str = "cpu"):
        super().__init__(config, device)
        self.model_name = model
        self.model = None

    @property
    def model_id(self) -> str:
        return f"hf:{self.model_name}"


class MaskFormerProposals(HFProposals):
    name = "hf-maskformer"
    scores_classes = True

    def setup(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

        revision = self.config.hf.revision
        with hub_access():
            self.processor = AutoImageProcessor.from_pretrained(self.model_name, revision=revision)
            self.model = AutoModelForUniversalSegmentation.from_pretrained(self.model_name, revision=revision)
        self.model.eval().to(self.device)

    def generate_batch(self, samples: list[Sample]) -> list[Proposals]:
        outputs, class_probs, pixel_masks = self._forward(samples)
        return [self._image_proposals(outputs.masks_queries_logits[i], class_probs[i], pixel_masks[i], sample)
                for i, sample in enumerate(samples)]

    def soft_masks(self, sample: Sample, resize: bool = True):
        """Every query of one image, none filtered: (Q, H, W) float32 mask probabilities at the image's
        size, and (Q, labels) class probabilities: the softmax over the labels and no-object, with
        no-object dropped and not renormalized (each row sums to 1 - p(no-object)), as MaskFormer's
        semantic inference uses them. The whole (Q, H, W) tensor is held at once.
        `resize=False`: the model runs at the image's own size (already resized by the caller)."""
        import torch

        outputs, class_probs, pixel_masks = self._forward([sample], resize)
        height, width = sample.image.shape[:2]
        chunks = [probabilities.cpu() for _, probabilities in
                  self._query_probabilities(outputs.masks_queries_logits[0].float(), pixel_masks[0], height, width)]
        return torch.cat(chunks) if chunks else torch.zeros((0, height, width)), class_probs[0].cpu().numpy()

    def _forward(self, samples: list[Sample], resize: bool = True):
        import torch

        self.setup()
        options = {} if resize else {"do_resize": False}
        inputs = self.processor(images=[s.image for s in samples], return_tensors="pt", **options).to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        class_probs = outputs.class_queries_logits.float().softmax(-1)[..., :-1]  # no-object excluded
        return outputs, class_probs, inputs["pixel_mask"]

    def generate(self, sample: Sample) -> Proposals:
        return self.generate_batch([sample])[0]

    @property
    def class_labels(self) -> tuple[str, ...]:
        labels = self.model.config.id2label
        return tuple(labels[i] for i in sorted(labels))

    def _query_probabilities(self, mask_logits, pixel_mask, height: int, width: int):
        """(start, (n, H, W) sigmoid mask probabilities) of the queries, upsampled a memory-bounded
        chunk at a time at the larger of the padded and the image size (each query is independent)."""
        import torch.nn.functional as F

        valid_rows, valid_cols = int(pixel_mask.any(1).sum()), int(pixel_mask.any(0).sum())
        largest = max((height, width), tuple(pixel_mask.shape[:2]), key=lambda shape: shape[0] * shape[1])
        step = masks_per_chunk(self.mask_pixels, *largest)
        for start in range(0, len(mask_logits), step):
            chunk = mask_logits[start : start + step]
            padded = F.interpolate(chunk[None], size=pixel_mask.shape, mode="bilinear", align_corners=False)[0]
            unpadded = padded[:, :valid_rows, :valid_cols]
            full = F.interpolate(unpadded[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            del padded, unpadded
            yield start, full.sigmoid_()

    def _image_proposals(self, mask_logits, class_probs, pixel_mask, sample: Sample) -> Proposals:
        objectness = class_probs.amax(-1)
        keep = objectness >= self.config.hf.score_threshold
        mask_logits, objectness, class_probs = mask_logits[keep].float(), objectness[keep], class_probs[keep]
        if not len(objectness):
            return Proposals([], [], self.name)
        renormalized = (class_probs / class_probs.sum(-1, keepdim=True).clamp_min(1e-12)).cpu().numpy()
        objectness = objectness.cpu().numpy()
        height, width = sample.image.shape[:2]
        parts = []
        for start, probabilities in self._query_probabilities(mask_logits, pixel_mask, height, width):
            masks = (probabilities > self.config.mask_threshold).cpu().numpy()
            count = len(masks)
            parts.append(Proposals.from_masks(masks, objectness[start : start + count], self.name,
                                              renormalized[start : start + count], self.class_labels))
        return _joined(parts, self.name, self.class_labels)


class SamProposals(HFProposals):
    name = "hf-sam"

    def setup(self) -> None:
        if self.model is not None:
            return
        from transformers import pipeline

        with hub_access():
            self.model = pipeline("mask-generation", model=self.model_name, revision=self.config.hf.revision,
                                  device=self.device)

    def generate(self, sample: Sample) -> Proposals:
        from PIL import Image

        self.setup()
        cfg = self.config.hf
        result = self.model(
            Image.fromarray(sample.image),
            points_per_batch=cfg.points_per_batch,
            pred_iou_thresh=cfg.pred_iou_thresh,
            stability_score_thresh=cfg.stability_score_thresh,
            mask_threshold=_logit(self.config.mask_threshold),
        )
        scores = np.asarray(result["scores"], dtype=np.float64).reshape(-1)
        kept = [number for number in range(len(result["masks"])) if scores[number] >= cfg.score_threshold]
        step = masks_per_chunk(self.mask_pixels, sample.image.shape[0], sample.image.shape[1])
        parts = [Proposals.from_masks(np.stack([np.asarray(result["masks"][n], dtype=bool) for n in chosen]),
                                      scores[chosen], self.name)
                 for chosen in (kept[start : start + step] for start in range(0, len(kept), step))]
        return _joined(parts, self.name)
