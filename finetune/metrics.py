"""Semantic segmentation metrics from a confusion matrix, as detectron2's SemSegEvaluator computes
them: a class counts towards the mean IoU when it occurs in the ground truth or the prediction."""

from __future__ import annotations

import numpy as np

from .datasets import IGNORE


class ConfusionMatrix:
    """Rows: ground-truth class; columns: predicted class, plus a last column for pixels that got
    no prediction at all (a miss for their class, a hit for none)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.counts = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, prediction: np.ndarray, labels: np.ndarray) -> None:
        """prediction: class per pixel, -1 where nothing was predicted; labels: IGNORE where unlabelled."""
        if prediction.shape != labels.shape:
            raise ValueError(f"prediction {prediction.shape} and labels {labels.shape} differ in shape")
        valid = labels != IGNORE
        gt = labels[valid].astype(np.int64)
        pred = prediction[valid].astype(np.int64)
        pred = np.where(pred < 0, self.num_classes, pred)
        size = self.num_classes * (self.num_classes + 1)
        self.counts += np.bincount(gt * (self.num_classes + 1) + pred, minlength=size).reshape(self.counts.shape)

    def results(self, class_names: list[str] | None = None) -> dict:
        hits = np.diag(self.counts[:, : self.num_classes]).astype(np.float64)
        per_gt = self.counts.sum(1).astype(np.float64)
        per_pred = self.counts[:, : self.num_classes].sum(0).astype(np.float64)
        union = per_gt + per_pred - hits
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, hits / union, np.nan)
            class_acc = np.where(per_gt > 0, hits / per_gt, np.nan)
        names = class_names or [str(i) for i in range(self.num_classes)]
        total = per_gt.sum()
        return {
            "mIoU": _percent(np.nanmean(iou)) if np.isfinite(iou).any() else None,
            "pixel_accuracy": _percent(hits.sum() / total) if total else None,
            "mean_class_accuracy": _percent(np.nanmean(class_acc)) if np.isfinite(class_acc).any() else None,
            "per_class_iou": {name: _percent(v) for name, v in zip(names, iou, strict=True) if np.isfinite(v)},
            "pixels": int(total),
        }


def _percent(value: float) -> float:
    return round(float(value) * 100, 4)
