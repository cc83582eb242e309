"""Mask utilities on COCO RLE (pycocotools): IoU, greedy mask NMS, and per-proposal post-processing."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from .records import Proposals


def iou_matrix(rles: list[dict]) -> np.ndarray:
    if not rles:
        return np.zeros((0, 0))
    return np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)), dtype=np.float64).reshape(len(rles), len(rles))


def greedy_nms(order: np.ndarray, ious: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by mask NMS: visit `order` best first, drop masks overlapping a kept one at >= threshold."""
    suppressed = np.zeros(len(ious), dtype=bool)
    keep = []
    for index in order:
        if suppressed[index]:
            continue
        keep.append(index)
        suppressed |= ious[index] >= threshold
    return np.asarray(keep, dtype=np.int64)


def finalize(proposals: Proposals, image_area: int, *, min_area: float, max_area: float,
             nms_iou: float, max_proposals: int, ious: np.ndarray | None = None) -> Proposals:
    """The post-processing every generator shares: area limits, mask NMS by score, cap.

    `ious`, when the caller has it already, is the IoU matrix of `proposals`."""
    if not len(proposals):
        return proposals
    fraction = proposals.areas / float(image_area)
    in_range = np.flatnonzero((fraction >= min_area) & (fraction <= max_area))
    if ious is None:
        ious = iou_matrix([proposals.rles[i] for i in in_range])
    else:
        ious = ious[np.ix_(in_range, in_range)]
    order = np.argsort(-proposals.scores[in_range], kind="stable")
    keep = greedy_nms(order, ious, nms_iou)[:max_proposals]
    return proposals.filter(in_range[keep])


def rle_from_annotation(segmentation, height: int, width: int) -> dict:
    """A COCO annotation's segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    if list(rle["size"]) != [height, width]:
        raise ValueError(f"annotation mask size {rle['size']} differs from the image size {[height, width]}")
    return rle
