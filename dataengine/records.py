"""The record shapes that flow between stages: one place defines them all.

A `Sample` enters the pipeline from a source with a key, an image reference and its
captions; each stage fills in its own field (nouns, decoded image, proposals, pairs) or
drops the sample with a reason. Nothing is ever removed from a batch: dropped samples
travel on to the writer, which turns them into reject rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from pycocotools import mask as mask_utils

from .reasons import IMAGE_LEVEL


@dataclass(frozen=True)
class Caption:
    id: str
    text: str


@dataclass(frozen=True)
class NounMention:
    """A noun (or known compound) and where it was first mentioned among an image's captions."""

    noun: str
    caption_id: str
    start: int  # character span of the mention in the caption text, end exclusive
    end: int
    mentions: int = 1  # how many times the noun occurs across all of the image's captions
    captions: int = 1  # how many of the image's captions mention it


@dataclass
class Reject:
    level: str  # IMAGE_LEVEL or NOUN_LEVEL
    reason: str
    detail: str = ""
    stage: str = ""
    noun: NounMention | None = None
    score: float | None = None
    margin: float | None = None


@dataclass
class Proposals:
    """A batch of class-agnostic masks of one image, stored as compressed COCO RLE (counts as bytes,
    as pycocotools wants them; the writer stores them as str).

    Modelled on segment-anything's MaskData: one container, filtered and concatenated as a whole.
    """

    rles: list[dict]
    scores: np.ndarray
    generator: str
    # Generators with a classifier (MaskFormer) also give each mask's probabilities over their own
    # labels, no-object excluded: (N, K) with `class_labels` naming the K columns.
    class_probs: np.ndarray | None = None
    class_labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(self.rles) != len(self.scores):
            raise ValueError(f"{len(self.rles)} masks but {len(self.scores)} scores")
        if self.class_probs is not None and len(self.class_probs) != len(self.rles):
            raise ValueError(f"{len(self.rles)} masks but {len(self.class_probs)} rows of class probabilities")

    def __len__(self) -> int:
        return len(self.rles)

    @cached_property
    def areas(self) -> np.ndarray:
        # pycocotools 2.0.11's area() overflows on lists of more than 255 masks: ask in chunks.
        chunks = [mask_utils.area(self.rles[i : i + 255]) for i in range(0, len(self.rles), 255)]
        return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, dtype=np.int64)

    @cached_property
    def boxes_xywh(self) -> np.ndarray:
        """Tight integer boxes (x, y, w, h) of the masks."""
        if not self.rles:
            return np.zeros((0, 4), dtype=np.int64)
        return np.rint(mask_utils.toBbox(self.rles)).astype(np.int64).reshape(-1, 4)

    def filter(self, keep) -> Proposals:
        """Keep by boolean mask or by indices."""
        keep = np.asarray(keep)
        indices = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        probs = None if self.class_probs is None else self.class_probs[indices]
        return Proposals([self.rles[i] for i in indices], self.scores[indices], self.generator, probs, self.class_labels)

    def decode(self) -> np.ndarray:
        """Full-resolution boolean masks, shape (N, H, W)."""
        if not self.rles:
            return np.zeros((0, 0, 0), dtype=bool)
        return np.moveaxis(mask_utils.decode(self.rles), -1, 0).astype(bool)

    @classmethod
    def from_masks(cls, masks: np.ndarray, scores, generator: str, class_probs: np.ndarray | None = None,
                   class_labels: tuple[str, ...] | None = None) -> Proposals:
        """Encode (N, H, W) boolean masks; empty masks are dropped here, once for every generator."""
        masks = np.asarray(masks, dtype=bool)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        non_empty = masks.reshape(len(masks), -1).any(axis=1) if len(masks) else np.zeros(0, bool)
        masks, scores = masks[non_empty], scores[non_empty]
        probs = None if class_probs is None else np.asarray(class_probs, dtype=np.float64)[non_empty]
        if not len(masks):
            return cls([], np.zeros(0), generator, probs, class_labels)
        rles = mask_utils.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))
        return cls(list(rles), scores, generator, probs, class_labels)


@dataclass
class Pair:
    """One mined (masked region, noun) pair, with the 224x224 crop CLIP saw.

    The crop and its mask are arrays until `files` (their JPEG and PNG bytes) is set; the match
    stage encodes them where it makes them, so that only compact bytes travel to the writer."""

    key: str
    noun: NounMention
    proposal_index: int
    score: float
    margin: float | None
    crop: np.ndarray | None  # (S, S, 3) uint8, outside-mask pixels at the CLIP mean
    crop_mask: np.ndarray | None  # (S, S) bool
    files: tuple[bytes, bytes] | None = None  # (KEY.jpg, KEY.mask.png)


@dataclass
class Sample:
    key: str
    image_id: str
    source: str  # where the image came from (a path, or tar/dataset + member), for provenance
    captions: list[Caption]
    image_path: str | None = None
    image_range: tuple[int, int] | None = None  # (offset, size) of the image inside image_path (tar members)
    image_bytes: bytes | None = None
    annotations: list[dict] | None = None  # COCO-style instances, where the source has them
    annotated_size: tuple[int, int] | None = None  # (height, width) the annotations were drawn on
    annotation_frame: str = "stored"  # "stored" pixels or the "exif"-rotated view (source.annotation_frame)
    index: int = -1  # position in the source's deterministic order
    shard: int = -1  # output shard, where an executor needs to carry it along

    nouns: list[NounMention] = field(default_factory=list)
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB, set by the decode stage
    height: int | None = None
    width: int | None = None
    orientation: int = 1  # EXIF orientation (1..8) of the stored pixels, which the decoder turned upright
    proposals: Proposals | None = None
    pairs: list[Pair] = field(default_factory=list)
    noun_rejects: list[Reject] = field(default_factory=list)
    reject: Reject | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage ("match.forward": a phase)

    @property
    def alive(self) -> bool:
        return self.reject is None

    def drop(self, reason: str, detail: str = "", stage: str = "") -> None:
        """Reject the whole image; later stages skip it and the writer records why."""
        if self.reject is None:
            self.reject = Reject(IMAGE_LEVEL, reason, detail, stage)
        self.image = self.image_bytes = None  # a rejected sample carries no pixels onward

    def caption_text(self, caption_id: str) -> str:
        for caption in self.captions:
            if caption.id == caption_id:
                return caption.text
        raise KeyError(caption_id)
