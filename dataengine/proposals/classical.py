"""Classical proposals, no learned weights: multi-scale Felzenszwalb and SLIC segments with their
hierarchical RAG merges (scikit-image), scored by how many segmentations agree on them.

Segmentation runs at `work_size` (longest side); kept masks are upsampled back (nearest) to the
image's own size and encoded a chunk at a time (at most `mask_pixels` mask pixels at once), so that
a large image's memory stays bounded. A segment's score is the fraction of segmentation levels that contain a near
copy of it (IoU >= nms_iou): regions that every scale and algorithm finds are likelier objects.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage import graph, segmentation

from ..config import DEFAULT_MASK_PIXELS, masks_per_chunk
from ..masks import finalize, iou_matrix
from ..records import Proposals, Sample
from . import ProposalGenerator


class ClassicalProposals(ProposalGenerator):
    name = "classical"
    postprocess = False  # done here, at work size, before upsampling only the survivors
    mask_pixels = DEFAULT_MASK_PIXELS  # the run's mask_pixels_per_chunk, set by the proposal stage

    def generate(self, sample: Sample) -> Proposals:
        cfg = self.config
        small = _resize_longest(sample.image, cfg.classical.work_size)
        levels = self.segmentation_levels(small)
        masks, level_of = _segments(levels, cfg.min_area, cfg.max_area)
        segments = Proposals.from_masks(masks, np.zeros(len(masks)), self.name)  # segments are never empty
        ious = iou_matrix(segments.rles)
        candidates = Proposals(segments.rles, _agreement(ious >= cfg.nms_iou, level_of, len(levels)), self.name)
        kept = finalize(candidates, small.shape[0] * small.shape[1], min_area=cfg.min_area, max_area=cfg.max_area,
                        nms_iou=cfg.nms_iou, max_proposals=cfg.max_proposals, ious=ious)
        return _upsampled(kept, sample.image.shape[:2], self.mask_pixels, self.name)

    def segmentation_levels(self, image: np.ndarray) -> list[np.ndarray]:
        """Label maps, finest first per algorithm: Felzenszwalb scales, SLIC sizes, then RAG merges of the finest of each."""
        cfg = self.config.classical
        felzenszwalb = [
            segmentation.felzenszwalb(image, scale=scale, sigma=cfg.felzenszwalb_sigma, min_size=cfg.felzenszwalb_min_size)
            for scale in sorted(cfg.felzenszwalb_scales)
        ]
        slic = [
            segmentation.slic(image, n_segments=n, compactness=cfg.slic_compactness, start_label=0)
            for n in sorted(cfg.slic_segments, reverse=True)
        ]
        merged = [_merge_hierarchical(image, base, cfg.merge_thresholds) for base in (felzenszwalb[:1] + slic[:1])]
        return felzenszwalb + slic + [level for levels in merged for level in levels]


def _merge_hierarchical(image: np.ndarray, labels: np.ndarray, thresholds: list[float]) -> list[np.ndarray]:
    """Mean-colour RAG merges of `labels`, one label map per threshold, coarser and coarser.

    One RAG is built and merged in place: each higher threshold continues the merge where the
    previous one stopped (merge_hierarchical maps the original labels through the merged graph).
    """
    rag = _mean_color_rag(image, labels)
    return [
        graph.merge_hierarchical(
            labels, rag, thresh=threshold, rag_copy=False, in_place_merge=True,
            merge_func=_merge_mean_color, weight_func=_mean_color_weight,
        )
        for threshold in sorted(thresholds)
    ]


def _mean_color_rag(image: np.ndarray, labels: np.ndarray) -> graph.RAG:
    """The graph `skimage.graph.rag_mean_color` builds (same node attributes, same edge weights),
    with adjacency found by array operations: rag_mean_color visits every pixel through a Python
    callback and cost about 0.4 s per 320-pixel image, more than the segmentations themselves."""
    flat = labels.ravel()
    count = np.bincount(flat)
    total = np.stack([np.bincount(flat, weights=image[..., c].ravel(), minlength=len(count)) for c in range(3)], 1)
    pairs = np.concatenate([
        np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
        np.stack([labels[:-1].ravel(), labels[1:].ravel()], 1),
        np.stack([labels[:-1, :-1].ravel(), labels[1:, 1:].ravel()], 1),  # rag_mean_color's default connectivity 2
        np.stack([labels[:-1, 1:].ravel(), labels[1:, :-1].ravel()], 1),
    ])
    pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1), axis=0)
    rag = graph.RAG()
    for label in np.flatnonzero(count):
        rag.add_node(int(label), labels=[int(label)], **{"pixel count": count[label], "total color": total[label].copy(),
                                                         "mean color": total[label] / count[label]})
    means = total / np.maximum(count, 1)[:, None]
    weights = np.linalg.norm(means[pairs[:, 0]] - means[pairs[:, 1]], axis=1)
    rag.add_weighted_edges_from((int(a), int(b), float(w)) for (a, b), w in zip(pairs, weights, strict=True))
    return rag


def _mean_color_weight(rag, src, dst, n):
    diff = rag.nodes[dst]["mean color"] - rag.nodes[n]["mean color"]
    return {"weight": float(np.linalg.norm(diff))}


def _merge_mean_color(rag, src, dst):
    node = rag.nodes[dst]
    node["total color"] += rag.nodes[src]["total color"]
    node["pixel count"] += rag.nodes[src]["pixel count"]
    node["mean color"] = node["total color"] / node["pixel count"]


def _segments(levels: list[np.ndarray], min_area: float, max_area: float) -> tuple[np.ndarray, np.ndarray]:
    """Every segment of every level within the area limits, as (N, h, w) masks, plus each one's level."""
    masks, level_of = [], []
    for number, labels in enumerate(levels):
        area = np.bincount(labels.ravel()) / labels.size
        ids = np.flatnonzero((area >= min_area) & (area <= max_area))
        if len(ids):
            masks.append(labels[None] == ids[:, None, None])
            level_of.extend([number] * len(ids))
    if not masks:
        return np.zeros((0, *levels[0].shape), dtype=bool), np.zeros(0, dtype=np.int64)
    masks, level_of = np.concatenate(masks), np.asarray(level_of)
    larger_first = np.argsort(-masks.sum(axis=(1, 2)), kind="stable")  # breaks score ties in NMS
    return masks[larger_first], level_of[larger_first]


def _agreement(similar: np.ndarray, level_of: np.ndarray, num_levels: int) -> np.ndarray:
    """Fraction of levels holding a segment similar to each one (itself included)."""
    if not len(level_of):
        return np.zeros(0)
    hits = np.zeros((len(level_of), num_levels), dtype=bool)
    rows, cols = np.nonzero(similar)
    hits[rows, level_of[cols]] = True
    return hits.sum(axis=1) / num_levels


def _resize_longest(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = size / max(height, width)
    if scale >= 1:
        return image
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(shape, Image.BILINEAR))


def _upsampled(kept: Proposals, shape: tuple[int, int], mask_pixels: int, name: str) -> Proposals:
    """`kept` (work size) upsampled to `shape` and encoded, at most `mask_pixels` mask pixels at a time."""
    if not len(kept):
        return Proposals([], np.zeros(0), name)
    step = masks_per_chunk(mask_pixels, shape[0], shape[1])
    parts = [Proposals.from_masks(_upsample(kept.filter(np.arange(start, min(start + step, len(kept)))).decode(), shape),
                                  kept.scores[start : start + step], name)
             for start in range(0, len(kept), step)]
    return Proposals([rle for part in parts for rle in part.rles], np.concatenate([part.scores for part in parts]), name)


def _upsample(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of (N, h, w) masks to (N, H, W), pixel centres aligned."""
    height, width = shape
    rows = np.minimum(((np.arange(height) + 0.5) * masks.shape[1] / height).astype(np.int64), masks.shape[1] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * masks.shape[2] / width).astype(np.int64), masks.shape[2] - 1)
    return masks[:, rows][:, :, cols]
