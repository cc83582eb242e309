"""Segmentation metrics and the benchmark's pixel logic against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from finetune.benchmark import ensemble, paint, paint_disjoint, tight_boxes
from finetune.datasets import IGNORE
from finetune.metrics import ConfusionMatrix

X = IGNORE  # short, to keep the hand-written maps readable


def test_miou_with_ignore_labels_by_hand():
    labels = np.array([[0, 0, 1, 1],
                       [0, 0, 1, X],
                       [2, 2, X, X]])
    prediction = np.array([[0, 1, 1, 1],
                           [0, 0, 1, 0],   # the ignored pixel's prediction does not count
                           [2, 0, 0, 1]])
    matrix = ConfusionMatrix(4)
    matrix.update(prediction, labels)
    result = matrix.results(["a", "b", "c", "d"])
    # class 0: gt 4, pred 4 (among valid pixels), hits 3 -> 3 / 5
    # class 1: gt 3, pred 4, hits 3 -> 3 / 4;  class 2: gt 2, pred 1, hits 1 -> 1 / 2;  class 3: absent, excluded
    assert result["per_class_iou"] == pytest.approx({"a": 60.0, "b": 75.0, "c": 50.0})
    assert result["mIoU"] == pytest.approx((60 + 75 + 50) / 3, abs=1e-3)
    assert result["pixel_accuracy"] == pytest.approx(100 * 7 / 9, abs=1e-3)
    assert result["mean_class_accuracy"] == pytest.approx(100 * (3 / 4 + 3 / 3 + 1 / 2) / 3, abs=1e-3)
    assert result["pixels"] == 9


def test_predicted_but_absent_class_counts_as_zero_and_no_prediction_as_a_miss():
    labels = np.array([[0, 0], [0, 0]])
    prediction = np.array([[0, 1], [-1, 0]])
    matrix = ConfusionMatrix(2)
    matrix.update(prediction, labels)
    result = matrix.results()
    assert result["per_class_iou"] == {"0": 50.0, "1": 0.0}  # class 0: 2 hits / (4 gt + 2 pred - 2)
    assert result["mIoU"] == 25.0 and result["pixel_accuracy"] == 50.0


def test_all_ignored_gives_no_numbers():
    matrix = ConfusionMatrix(3)
    matrix.update(np.zeros((2, 2), dtype=np.int64), np.full((2, 2), X))
    result = matrix.results()
    assert result["mIoU"] is None and result["pixel_accuracy"] is None and result["pixels"] == 0


def test_paint_sums_mask_probabilities_and_leaves_uncovered_pixels_unpredicted():
    masks = torch.tensor([[[1, 1, 0], [0, 0, 0]],
                          [[0, 1, 1], [0, 0, 0]]], dtype=torch.bool)
    probabilities = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    # pixel (0, 1): class 0 gets 0.9 + 0.3, class 1 gets 0.1 + 0.7 -> class 0
    assert paint(masks, probabilities).tolist() == [[0, 0, 1], [-1, -1, -1]]
    assert paint(masks, probabilities, chunk=2).tolist() == [[0, 0, 1], [-1, -1, -1]]  # chunks change nothing
    assert paint_disjoint(masks[:1], np.array([1])).tolist() == [[1, 1, -1], [-1, -1, -1]]


def test_tight_boxes_and_ensemble():
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4, 0] = True
    assert tight_boxes(masks).tolist() == [[2, 1, 3, 2], [0, 4, 1, 1]]
    p_clip, p_gen = torch.tensor([0.5, 0.5]), torch.tensor([0.8, 0.2])
    mixed = ensemble(p_clip, p_gen, 0.7)
    assert mixed[0].item() == pytest.approx(0.8 ** 0.3 * 0.5 ** 0.7)
    assert torch.allclose(ensemble(p_clip, p_gen, 1.0), p_clip) and torch.allclose(ensemble(p_clip, p_gen, 0.0), p_gen)
    assert not math.isnan(ensemble(torch.tensor([0.0]), torch.tensor([0.0]), 0.5).item())
