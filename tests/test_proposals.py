"""Proposal containers, shared post-processing and the generators (annotations, classical, hf).

The hf generators run through the real code path on tiny, randomly initialised models of the real
classes, written with `save_pretrained` into a temporary folder (no network, no downloads).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import swin_config
from pycocotools import mask as mask_utils

from dataengine.config import ConfigError, ProposalConfig
from dataengine.masks import finalize, greedy_nms, iou_matrix, rle_from_annotation
from dataengine.proposals import create_generator
from dataengine.records import Proposals, Sample

# ---------------------------------------------------------------------------------------------
# helpers


def box_mask(height: int, width: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def make_sample(image: np.ndarray | None = None, *, height=None, width=None, annotations=None) -> Sample:
    sample = Sample(key="k0", image_id="img0", source="test", captions=[], annotations=annotations)
    sample.image = image
    if image is not None:
        height, width = image.shape[:2]
    sample.height, sample.width = height, width
    return sample


def encode(masks: np.ndarray) -> list[dict]:
    return list(mask_utils.encode(np.asfortranarray(np.moveaxis(np.asarray(masks, dtype=np.uint8), 0, -1))))


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


# ---------------------------------------------------------------------------------------------
# Proposals container


def test_from_masks_drops_empty_masks_and_keeps_scores_aligned():
    masks = np.zeros((4, 6, 7), dtype=bool)
    masks[0, 1:3, 1:4] = True
    masks[2, 0, 0] = True
    # masks 1 and 3 are empty
    proposals = Proposals.from_masks(masks, [0.1, 0.2, 0.3, 0.4], "g")
    assert len(proposals) == 2
    np.testing.assert_array_equal(proposals.scores, [0.1, 0.3])
    np.testing.assert_array_equal(proposals.decode(), masks[[0, 2]])
    assert proposals.generator == "g"
    assert all(isinstance(rle["counts"], bytes) for rle in proposals.rles)
    assert [list(rle["size"]) for rle in proposals.rles] == [[6, 7], [6, 7]]


def test_from_masks_all_empty_and_no_masks():
    empty = Proposals.from_masks(np.zeros((3, 5, 5), dtype=bool), [1, 2, 3], "g")
    assert len(empty) == 0 and empty.scores.shape == (0,)
    none = Proposals.from_masks(np.zeros((0, 5, 5), dtype=bool), [], "g")
    assert len(none) == 0
    assert none.areas.shape == (0,) and none.boxes_xywh.shape == (0, 4)


def test_proposals_rejects_mismatched_scores():
    rles = encode(np.ones((2, 3, 3), dtype=bool))
    with pytest.raises(ValueError):
        Proposals(rles, [0.5], "g")


def test_decode_round_trip():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 13, 17)) > 0.5
    masks[:, 0, 0] = True  # none empty
    proposals = Proposals.from_masks(masks, np.arange(5), "g")
    decoded = proposals.decode()
    assert decoded.dtype == bool and decoded.shape == (5, 13, 17)
    np.testing.assert_array_equal(decoded, masks)


def test_areas_and_boxes():
    masks = np.stack([box_mask(20, 30, 2, 3, 7, 13), box_mask(20, 30, 0, 0, 20, 30), box_mask(20, 30, 19, 29, 20, 30)])
    proposals = Proposals.from_masks(masks, [1, 2, 3], "g")
    np.testing.assert_array_equal(proposals.areas, [50, 600, 1])
    assert proposals.areas.dtype == np.int64
    np.testing.assert_array_equal(proposals.boxes_xywh, [[3, 2, 10, 5], [0, 0, 30, 20], [29, 19, 1, 1]])


def test_areas_of_more_than_255_masks():
    """pycocotools 2.0.11's area() overflows beyond 255 masks; the container asks in chunks."""
    count = 600
    masks = np.zeros((count, 8, 10), dtype=bool)
    expected = np.empty(count, dtype=np.int64)
    for i in range(count):
        n = i % 80 + 1
        flat = np.zeros(80, dtype=bool)
        flat[:n] = True
        masks[i] = flat.reshape(8, 10)
        expected[i] = n
    proposals = Proposals.from_masks(masks, np.zeros(count), "g")
    areas = proposals.areas
    assert areas.shape == (count,)
    np.testing.assert_array_equal(areas, expected)
    np.testing.assert_array_equal(areas, proposals.decode().sum(axis=(1, 2)))


def test_filter_by_bool_and_by_index():
    masks = np.stack([box_mask(10, 10, 0, 0, i + 1, i + 1) for i in range(4)])
    proposals = Proposals.from_masks(masks, [0.4, 0.3, 0.2, 0.1], "g")
    by_bool = proposals.filter(np.array([True, False, True, False]))
    np.testing.assert_array_equal(by_bool.scores, [0.4, 0.2])
    np.testing.assert_array_equal(by_bool.areas, [1, 9])
    by_index = proposals.filter(np.array([3, 0]))  # order follows the indices
    np.testing.assert_array_equal(by_index.scores, [0.1, 0.4])
    np.testing.assert_array_equal(by_index.decode(), masks[[3, 0]])
    assert by_index.generator == "g"
    assert len(proposals.filter(np.zeros(4, dtype=bool))) == 0
    assert len(proposals) == 4  # the original is untouched


def test_filter_with_an_empty_index_list():
    proposals = Proposals.from_masks(np.stack([box_mask(6, 6, 0, 0, 2, 2)]), [0.9], "a")
    assert len(proposals.filter([])) == 0 and proposals.filter([]).decode().shape[0] == 0


# ---------------------------------------------------------------------------------------------
# iou_matrix / greedy_nms / finalize


def test_iou_matrix_values():
    masks = np.stack([box_mask(10, 10, 0, 0, 10, 10), box_mask(10, 10, 0, 0, 10, 5), box_mask(10, 10, 0, 5, 10, 10)])
    ious = iou_matrix(encode(masks))
    expected = np.array([[1.0, 0.5, 0.5], [0.5, 1.0, 0.0], [0.5, 0.0, 1.0]])
    np.testing.assert_allclose(ious, expected)
    assert iou_matrix([]).shape == (0, 0)


def test_greedy_nms_suppressed_masks_do_not_suppress():
    # 0 overlaps 1, 1 overlaps 2, 0 does not overlap 2: greedy keeps 0 and 2
    ious = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.9], [0.1, 0.9, 1.0]])
    np.testing.assert_array_equal(greedy_nms(np.array([0, 1, 2]), ious, 0.8), [0, 2])
    np.testing.assert_array_equal(greedy_nms(np.array([1, 0, 2]), ious, 0.8), [1])


IMAGE = 20 * 20


def finalize_defaults(**overrides):
    params = dict(min_area=0.0, max_area=1.0, nms_iou=0.8, max_proposals=100)
    params.update(overrides)
    return params


def test_finalize_area_limits_are_fractions_and_inclusive():
    masks = np.stack([
        box_mask(20, 20, 0, 0, 2, 2),  # 4 px = 0.01
        box_mask(20, 20, 5, 5, 15, 15),  # 100 px = 0.25
        box_mask(20, 20, 0, 0, 20, 20),  # 400 px = 1.0
        box_mask(20, 20, 19, 19, 20, 20),  # 1 px = 0.0025
    ])
    proposals = Proposals.from_masks(masks, [0.1, 0.2, 0.3, 0.4], "g")
    kept = finalize(proposals, IMAGE, **finalize_defaults(min_area=0.005, max_area=0.9))
    np.testing.assert_array_equal(np.sort(kept.areas), [4, 100])
    # the limits themselves are inside the range
    kept = finalize(proposals, IMAGE, **finalize_defaults(min_area=0.01, max_area=0.25))
    np.testing.assert_array_equal(np.sort(kept.areas), [4, 100])
    kept = finalize(proposals, IMAGE, **finalize_defaults(min_area=0.0101, max_area=0.2499))
    assert len(kept) == 0


def test_finalize_nms_keeps_higher_score_of_near_duplicates():
    big = box_mask(20, 20, 0, 0, 10, 10)
    near = box_mask(20, 20, 0, 0, 10, 9)  # IoU 0.9 with big
    other = box_mask(20, 20, 12, 12, 18, 18)
    proposals = Proposals.from_masks(np.stack([big, near, other]), [0.5, 0.7, 0.6], "g")
    kept = finalize(proposals, IMAGE, **finalize_defaults(nms_iou=0.8))
    assert len(kept) == 2
    np.testing.assert_array_equal(kept.scores, [0.7, 0.6])
    np.testing.assert_array_equal(kept.decode(), np.stack([near, other]))
    # below the NMS threshold both survive
    kept = finalize(proposals, IMAGE, **finalize_defaults(nms_iou=0.95))
    assert len(kept) == 3


def test_finalize_nms_threshold_is_inclusive():
    a = box_mask(20, 20, 0, 0, 10, 10)
    b = box_mask(20, 20, 0, 0, 10, 8)  # IoU exactly 0.8
    proposals = Proposals.from_masks(np.stack([a, b]), [0.9, 0.8], "g")
    kept = finalize(proposals, IMAGE, **finalize_defaults(nms_iou=0.8))
    np.testing.assert_array_equal(kept.scores, [0.9])


def test_finalize_out_of_range_mask_does_not_suppress():
    full = box_mask(20, 20, 0, 0, 20, 20)  # over max_area, best score
    almost = box_mask(20, 20, 0, 0, 20, 19)  # IoU 0.95 with full, in range
    proposals = Proposals.from_masks(np.stack([full, almost]), [0.99, 0.5], "g")
    kept = finalize(proposals, IMAGE, **finalize_defaults(max_area=0.98, nms_iou=0.8))
    assert len(kept) == 1
    np.testing.assert_array_equal(kept.decode()[0], almost)


def test_finalize_nms_after_area_filter():
    """NMS indices refer to the in-range masks, not to the input order."""
    tiny = box_mask(20, 20, 19, 19, 20, 20)  # below min_area, listed first
    a = box_mask(20, 20, 0, 0, 10, 10)
    b = box_mask(20, 20, 0, 0, 10, 9)  # IoU 0.9 with a
    c = box_mask(20, 20, 12, 0, 20, 20)
    proposals = Proposals.from_masks(np.stack([tiny, a, b, c]), [0.99, 0.8, 0.9, 0.5], "g")
    kept = finalize(proposals, IMAGE, **finalize_defaults(min_area=0.01, nms_iou=0.8))
    np.testing.assert_array_equal(kept.scores, [0.9, 0.5])
    np.testing.assert_array_equal(kept.decode(), np.stack([b, c]))


def test_finalize_caps_and_sorts_best_first():
    masks = np.stack([box_mask(20, 20, r, 0, r + 1, 20) for r in range(10)])  # disjoint rows
    scores = np.array([0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    proposals = Proposals.from_masks(masks, scores, "g")
    kept = finalize(proposals, IMAGE, **finalize_defaults(max_proposals=4))
    np.testing.assert_array_equal(kept.scores, [0.9, 0.8, 0.7, 0.6])
    np.testing.assert_array_equal(kept.decode(), masks[[1, 6, 4, 8]])
    everything = finalize(proposals, IMAGE, **finalize_defaults())
    assert len(everything) == 10
    assert np.all(np.diff(everything.scores) <= 0)


def test_finalize_with_precomputed_ious_matches():
    rng = np.random.default_rng(1)
    masks = rng.random((12, 20, 20)) > 0.6
    masks[:, 0, 0] = True
    proposals = Proposals.from_masks(masks, rng.random(12), "g")
    params = finalize_defaults(min_area=0.3, max_area=0.5, nms_iou=0.5, max_proposals=5)
    a = finalize(proposals, IMAGE, **params)
    b = finalize(proposals, IMAGE, ious=iou_matrix(proposals.rles), **params)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.rles == b.rles


def test_finalize_empty():
    empty = Proposals([], np.zeros(0), "g")
    assert len(finalize(empty, IMAGE, **finalize_defaults())) == 0


# ---------------------------------------------------------------------------------------------
# rle_from_annotation


def test_rle_from_polygons():
    rle = rle_from_annotation([[1, 1, 5, 1, 5, 4, 1, 4]], 7, 8)
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), box_mask(7, 8, 1, 1, 4, 5))
    assert list(rle["size"]) == [7, 8]
    # several polygons of one object are merged into one mask
    rle = rle_from_annotation([[1, 1, 5, 1, 5, 4, 1, 4], [6, 5, 7, 5, 7, 6, 6, 6]], 7, 8)
    expected = box_mask(7, 8, 1, 1, 4, 5) | box_mask(7, 8, 5, 6, 6, 7)
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), expected)


def test_rle_from_uncompressed_rle():
    height, width = 5, 4
    # column-major runs: 6 off, 3 on, 5 off, 2 on, the rest off
    segmentation = {"size": [height, width], "counts": [6, 3, 5, 2, 4]}
    flat = np.zeros(height * width, dtype=bool)
    flat[6:9] = True
    flat[14:16] = True
    expected = flat.reshape((height, width), order="F")
    rle = rle_from_annotation(segmentation, height, width)
    assert isinstance(rle["counts"], bytes)
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), expected)
    assert segmentation == {"size": [height, width], "counts": [6, 3, 5, 2, 4]}  # input untouched


def test_rle_from_compressed_rle_str_and_bytes():
    mask = box_mask(9, 11, 2, 3, 7, 10)
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    as_str = {"size": list(compressed["size"]), "counts": compressed["counts"].decode("ascii")}
    rle = rle_from_annotation(as_str, 9, 11)
    assert isinstance(rle["counts"], bytes)
    assert isinstance(as_str["counts"], str)  # the caller's dict is not modified
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
    rle = rle_from_annotation(dict(compressed), 9, 11)
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)


def test_rle_size_mismatch_raises():
    with pytest.raises(ValueError, match="differs"):
        rle_from_annotation({"size": [5, 4], "counts": [20]}, 4, 5)
    compressed = mask_utils.encode(np.asfortranarray(box_mask(9, 11, 2, 3, 7, 10).astype(np.uint8)))
    with pytest.raises(ValueError, match="differs"):
        rle_from_annotation({"size": [9, 11], "counts": compressed["counts"].decode()}, 9, 12)


# ---------------------------------------------------------------------------------------------
# annotations generator


def test_annotation_generator():
    height, width = 12, 16
    square = box_mask(height, width, 2, 3, 6, 9)
    compressed = mask_utils.encode(np.asfortranarray(box_mask(height, width, 8, 10, 12, 16).astype(np.uint8)))
    annotations = [
        {"segmentation": [[3, 2, 9, 2, 9, 6, 3, 6]], "iscrowd": 0},  # the same square as a polygon
        {"segmentation": {"size": [height, width], "counts": [height * width]}, "iscrowd": 1},  # empty
        {"segmentation": {"size": [height, width], "counts": compressed["counts"].decode()}, "iscrowd": 1},
    ]
    image = np.zeros((height, width, 3), dtype=np.uint8)
    sample = make_sample(image, annotations=annotations)
    generator = create_generator("annotations", ProposalConfig(), "cpu")
    assert type(generator).__name__ == "AnnotationProposals"
    assert generator.postprocess is False and generator.needs_annotations is True
    generator.setup()
    proposals = generator.generate(sample)
    assert proposals.generator == "annotations"
    assert len(proposals) == 2  # the empty annotation is dropped
    np.testing.assert_array_equal(proposals.scores, [1.0, 1.0])
    masks = proposals.decode()
    np.testing.assert_array_equal(masks[0], square)
    np.testing.assert_array_equal(masks[1], box_mask(height, width, 8, 10, 12, 16))
    assert len(generator.generate_batch([sample, sample])) == 2


def test_annotation_generator_without_annotations():
    generator = create_generator("annotations", ProposalConfig(), "cpu")
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    assert len(generator.generate(make_sample(image, annotations=[]))) == 0
    with pytest.raises(ValueError):
        generator.generate(make_sample(image, annotations=None))


# ---------------------------------------------------------------------------------------------
# classical generator

RECTANGLES = [  # y0, x0, y1, x1, colour
    (10, 10, 50, 60, (220, 30, 30)),
    (60, 80, 110, 150, (30, 30, 220)),
    (15, 90, 45, 140, (240, 230, 40)),
]


@pytest.fixture(scope="module")
def rectangles_image():
    rng = np.random.default_rng(0)
    image = np.full((120, 160, 3), (90, 140, 60), dtype=np.int64)
    truth = []
    for y0, x0, y1, x1, colour in RECTANGLES:
        image[y0:y1, x0:x1] = colour
        truth.append(box_mask(120, 160, y0, x0, y1, x1))
    image = np.clip(image + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
    return image, np.stack(truth)


def best_iou_per_truth(masks: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.array([max(pairwise_iou(m, t) for m in masks) for t in truth])


def test_classical_proposals_on_synthetic_image(rectangles_image):
    image, truth = rectangles_image
    config = ProposalConfig(max_proposals=40)
    generator = create_generator("classical", config, "cpu")
    assert type(generator).__name__ == "ClassicalProposals"
    generator.setup()
    proposals = generator.generate(make_sample(image))
    assert proposals.generator == "classical"
    assert 0 < len(proposals) <= config.max_proposals
    masks = proposals.decode()
    assert masks.shape[1:] == image.shape[:2]
    fraction = proposals.areas / (image.shape[0] * image.shape[1])
    assert np.all(fraction >= config.min_area) and np.all(fraction <= config.max_area)
    ious = iou_matrix(proposals.rles)
    np.fill_diagonal(ious, 0.0)
    assert ious.max() < config.nms_iou
    assert np.all(np.diff(proposals.scores) <= 0)  # best first
    assert np.all((proposals.scores > 0) & (proposals.scores <= 1))
    # each flat rectangle is found by some segmentation
    assert np.all(best_iou_per_truth(masks, truth) > 0.8)
    # scores are the fraction of segmentation levels (3 Felzenszwalb, 2 SLIC, 2 x 3 RAG merges) that agree
    c = config.classical
    levels = len(c.felzenszwalb_scales) + len(c.slic_segments) + 2 * len(c.merge_thresholds)
    np.testing.assert_allclose(proposals.scores * levels, np.round(proposals.scores * levels), atol=1e-9)
    assert proposals.scores.min() < proposals.scores.max()
    for rectangle in truth:  # a flat rectangle is found by most levels
        best = int(np.argmax([pairwise_iou(m, rectangle) for m in masks]))
        assert proposals.scores[best] >= 0.5


def test_classical_respects_limits(rectangles_image):
    image, _ = rectangles_image
    config = ProposalConfig(max_proposals=5, min_area=0.05, max_area=0.3, nms_iou=0.5)
    proposals = create_generator("classical", config, "cpu").generate(make_sample(image))
    assert 0 < len(proposals) <= 5
    fraction = proposals.areas / (image.shape[0] * image.shape[1])
    assert np.all(fraction >= 0.05) and np.all(fraction <= 0.3)
    ious = iou_matrix(proposals.rles)
    np.fill_diagonal(ious, 0.0)
    assert ious.max() < 0.5


def test_classical_upsamples_to_full_size(rectangles_image):
    """With a work size below the image size, masks are computed small and brought back to full size."""
    image, truth = rectangles_image
    config = ProposalConfig()
    config.classical.work_size = 80
    proposals = create_generator("classical", config, "cpu").generate(make_sample(image))
    assert len(proposals) > 0
    masks = proposals.decode()
    assert masks.shape[1:] == (120, 160)
    assert best_iou_per_truth(masks, truth).max() > 0.8


def test_classical_uniform_image_felzenszwalb_only_gives_nothing():
    config = ProposalConfig()
    config.classical.slic_segments = []
    image = np.full((120, 160, 3), 128, dtype=np.uint8)
    proposals = create_generator("classical", config, "cpu").generate(make_sample(image))
    assert len(proposals) == 0


# ---------------------------------------------------------------------------------------------
# registry errors


def test_create_generator_errors():
    with pytest.raises(ConfigError, match="unknown generator"):
        create_generator("bogus", ProposalConfig(), "cpu")
    with pytest.raises(ConfigError, match="needs a model"):
        create_generator("hf:", ProposalConfig(), "cpu")
    with pytest.raises(ConfigError, match="cannot load"):
        create_generator("hf:/nonexistent", ProposalConfig(), "cpu")
    with pytest.raises(ConfigError, match="cannot load"):
        create_generator("hf:no-such-org/no-such-model", ProposalConfig(), "cpu")


def test_hf_unsupported_model_type(tmp_path):
    from transformers import SwinConfig

    SwinConfig().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="swin"):
        create_generator(f"hf:{tmp_path}", ProposalConfig(), "cpu")


# ---------------------------------------------------------------------------------------------
# hf generators on tiny random models


@pytest.fixture(scope="session")
def mask2former_dir(tmp_path_factory):
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    path = tmp_path_factory.mktemp("mask2former")
    torch.manual_seed(0)
    config = Mask2FormerConfig(
        backbone_config=swin_config(), num_labels=5, hidden_dim=32, mask_feature_size=32, feature_size=32,
        encoder_layers=1, decoder_layers=2, num_attention_heads=1, dim_feedforward=32, num_queries=10,
        encoder_feedforward_dim=32,
    )
    Mask2FormerForUniversalSegmentation(config).save_pretrained(path)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def sam_dir(tmp_path_factory):
    import torch
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    path = tmp_path_factory.mktemp("sam")
    torch.manual_seed(0)
    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1, image_size=128, patch_size=16,
                             output_channels=32, mlp_dim=32, global_attn_indexes=[0], window_size=4, num_pos_feats=16)
    config = SamConfig(
        vision_config=vision,
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=32, image_size=128, patch_size=16,
                                                     mask_input_channels=4, num_point_embeddings=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1,
                                                 mlp_dim=32, iou_head_hidden_dim=32),
    )
    SamModel(config).save_pretrained(path)
    SamProcessor(SamImageProcessor(size={"longest_edge": 128}, pad_size={"height": 128, "width": 128})).save_pretrained(path)
    return path


def rgb_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth image with a few flat shapes (not noise: keeps SAM's RLE post-processing cheap)."""
    image = np.full((height, width, 3), (60, 120, 180), dtype=np.uint8)
    image[height // 5 : height // 2, width // 6 : width // 2] = (220, 40, 40)
    image[height // 2 :, width // 2 : width - 5] = (40, 200, 60)
    rng = np.random.default_rng(seed)
    image[: height // 6, : width // 6] = rng.integers(0, 256, 3)
    return image


def hf_config(**hf) -> ProposalConfig:
    config = ProposalConfig()
    for key, value in hf.items():
        setattr(config.hf, key, value)
    return config


def check_structure(proposals: Proposals, shape: tuple[int, int], generator_name: str) -> None:
    assert proposals.generator == generator_name
    assert len(proposals.rles) == len(proposals.scores)
    for rle in proposals.rles:
        assert list(rle["size"]) == list(shape)
    if len(proposals):
        masks = proposals.decode()
        assert masks.shape == (len(proposals), *shape)
        assert masks.reshape(len(masks), -1).any(axis=1).all()  # empty masks are dropped
        assert np.all((proposals.scores >= 0.0) & (proposals.scores <= 1.0))


@pytest.mark.parametrize("fixture", ["maskformer_dir", "mask2former_dir"])
def test_maskformer_generator_masks_at_image_size(fixture, request):
    from dataengine.proposals.hf import MaskFormerProposals

    path = request.getfixturevalue(fixture)
    generator = create_generator(f"hf:{path}", ProposalConfig(), "cpu")
    assert type(generator) is MaskFormerProposals
    assert generator.model_id == f"hf:{path}"
    assert generator.postprocess is True
    generator.setup()
    model = generator.model
    generator.setup()  # idempotent
    assert generator.model is model

    sample = make_sample(rgb_image(90, 140))
    single = generator.generate(sample)
    check_structure(single, (90, 140), "hf-maskformer")
    assert len(single) <= 10  # one mask per query at most

    other = make_sample(rgb_image(70, 50, seed=1))
    batch = generator.generate_batch([sample, other])
    assert len(batch) == 2
    check_structure(batch[0], (90, 140), "hf-maskformer")
    check_structure(batch[1], (70, 50), "hf-maskformer")


def _all_queries(path, mask_threshold: float = 0.0) -> Proposals:
    """Every query of the model on the test image: sigmoid > 0 holds everywhere, so no mask is empty."""
    config = hf_config(score_threshold=0.0)
    config.mask_threshold = mask_threshold
    return create_generator(f"hf:{path}", config, "cpu").generate(make_sample(rgb_image(90, 140)))


def test_maskformer_objectness_scores(maskformer_dir):
    everything = _all_queries(maskformer_dir)
    assert len(everything) == 10  # num_queries
    assert np.all((everything.scores >= 0) & (everything.scores <= 1))
    assert len(np.unique(everything.scores)) == 10
    assert everything.decode().all()


def test_maskformer_score_threshold_filters(maskformer_dir):
    everything = _all_queries(maskformer_dir)
    threshold = float(np.median(everything.scores))
    config = hf_config(score_threshold=threshold)
    config.mask_threshold = 0.0
    kept = create_generator(f"hf:{maskformer_dir}", config, "cpu").generate(make_sample(rgb_image(90, 140)))
    assert 0 < len(kept) < len(everything)
    assert np.all(kept.scores >= threshold)
    np.testing.assert_array_equal(np.sort(kept.scores), np.sort(everything.scores[everything.scores >= threshold]))


@pytest.mark.parametrize("fixture", ["maskformer_dir", "mask2former_dir"])
@pytest.mark.parametrize("favoured_class, confident", [(2, True), (-1, False)])
def test_maskformer_score_is_best_class_probability_without_no_object(fixture, favoured_class, confident, request,
                                                                        tmp_path):
    """A class head set by hand: one real class far above the rest gives scores near 1; the no-object
    class far above the rest gives scores near 0 (it is excluded from the maximum)."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

    source = request.getfixturevalue(fixture)
    model = AutoModelForUniversalSegmentation.from_pretrained(source)
    with torch.no_grad():
        model.class_predictor.weight.zero_()
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[favoured_class] = 30.0
    model.save_pretrained(tmp_path)
    AutoImageProcessor.from_pretrained(source).save_pretrained(tmp_path)

    config = hf_config(score_threshold=0.0)
    config.mask_threshold = 0.0
    proposals = create_generator(f"hf:{tmp_path}", config, "cpu").generate(make_sample(rgb_image(90, 140)))
    assert len(proposals) == 10
    if confident:
        assert np.all(proposals.scores > 0.999)
    else:
        assert np.all(proposals.scores < 0.001)


@pytest.mark.parametrize("fixture", ["maskformer_dir", "mask2former_dir"])
def test_maskformer_score_threshold_above_one_gives_nothing(fixture, request):
    path = request.getfixturevalue(fixture)
    generator = create_generator(f"hf:{path}", hf_config(score_threshold=1.01), "cpu")
    proposals = generator.generate(make_sample(rgb_image(90, 140)))
    assert len(proposals) == 0


def test_maskformer_mask_threshold(maskformer_dir):
    """A higher mask_threshold gives, query by query, a subset of the lower threshold's mask."""
    sample = make_sample(rgb_image(90, 140))
    results = {}
    for threshold in (0.3, 0.5, 0.7):
        config = hf_config(score_threshold=0.0)
        config.mask_threshold = threshold
        results[threshold] = create_generator(f"hf:{maskformer_dir}", config, "cpu").generate(sample)
        check_structure(results[threshold], (90, 140), "hf-maskformer")

    totals = {t: int(p.areas.sum()) for t, p in results.items()}
    assert totals[0.3] >= totals[0.5] >= totals[0.7]
    assert totals[0.3] > totals[0.7]  # the threshold changes the masks

    # the objectness score does not depend on the threshold: it identifies the query
    low = {score: mask for score, mask in zip(results[0.3].scores, results[0.3].decode(), strict=True)}
    assert len(low) == len(results[0.3])  # distinct scores
    for high_threshold in (0.5, 0.7):
        high = results[high_threshold]
        for score, mask in zip(high.scores, high.decode() if len(high) else [], strict=True):
            assert score in low
            assert not np.any(mask & ~low[score])  # subset of the same query's lower-threshold mask


@pytest.fixture(scope="module")
def sam_result(sam_dir):
    generator = create_generator(f"hf:{sam_dir}", hf_config(pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                                             points_per_batch=256), "cpu")
    generator.setup()
    sample = make_sample(rgb_image(48, 32))
    return generator, generator.generate(sample)


def test_sam_generator(sam_dir, sam_result):
    from dataengine.proposals.hf import SamProposals

    generator, proposals = sam_result
    assert type(generator) is SamProposals
    assert generator.model_id == f"hf:{sam_dir}"
    assert generator.postprocess is True
    check_structure(proposals, (48, 32), "hf-sam")
    assert len(proposals) >= 1  # with both SAM thresholds off, the deduplicated grid leaves some mask


def test_sam_score_threshold_above_one_gives_nothing(sam_dir, sam_result):
    _, lenient = sam_result
    config = hf_config(pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_batch=256, score_threshold=1.01)
    proposals = create_generator(f"hf:{sam_dir}", config, "cpu").generate(make_sample(rgb_image(48, 32)))
    assert len(proposals) == 0
    assert proposals.generator == "hf-sam"
    assert np.all(lenient.scores < 1.01)


def test_annotation_generator_refuses_masks_drawn_on_another_size():
    """An image decoded at another size than the annotations were drawn on (e.g. an EXIF rotation)
    is rejected with its own reason, not given masks that do not fit it."""
    from dataengine.images import ImageRejected

    annotations = [{"segmentation": [[2.0, 2.0, 20.0, 2.0, 20.0, 10.0, 2.0, 10.0]]}]
    sample = make_sample(np.zeros((30, 40, 3), np.uint8), annotations=annotations)
    sample.annotated_size = (40, 30)  # the same image, rotated
    with pytest.raises(ImageRejected) as info:
        create_generator("annotations", ProposalConfig(), "cpu").generate(sample)
    assert info.value.reason == "size_mismatch"
    sample.annotated_size = (30, 40)
    assert len(create_generator("annotations", ProposalConfig(), "cpu").generate(sample)) == 1
