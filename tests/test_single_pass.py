"""The single-pass region encoder: a whole-image region is the image, regions do not see each other,
unsupported towers and mask prompts are refused, and mining with it gives the same bytes whatever
the executor and batch sizes."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from test_ray import assert_same_output, coco_job

from dataengine.config import ConfigError, MatchConfig, MineConfig
from dataengine.pipeline import mine
from dataengine.regions import normalize
from dataengine.single_pass import (
    SinglePassEncoder,
    SinglePassError,
    SinglePassRegions,
    attention_bias,
    input_grid,
    patch_coverage,
)


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8))


def region_masks(height: int, width: int) -> torch.Tensor:
    masks = torch.zeros((4, height, width), dtype=torch.bool)
    masks[0] = True  # the whole image
    masks[1, : height // 2] = True
    masks[2, 5:20, 8:30] = True
    masks[3, height - 3 :, width - 3 :] = True  # smaller than a patch
    return masks


def test_a_region_covering_the_whole_image_gives_the_plain_image_feature(tiny_clip):
    encoder = SinglePassEncoder(tiny_clip)
    size = tiny_clip.image_size
    image = random_image(size, size)
    features = encoder(image, patch_coverage(region_masks(size, size), encoder.grid(size, size)))
    plain = tiny_clip.encode_images(normalize(image[None], tiny_clip.mean, tiny_clip.std))  # the image at its input size
    assert torch.allclose(features[0], plain[0], atol=1e-5)
    assert not torch.allclose(features[1], plain[0], atol=1e-2)


def test_the_whole_image_region_is_the_class_token_for_any_insertion_depth(tiny_clip):
    size = tiny_clip.image_size
    image, masks = random_image(size, size, seed=1), region_masks(size, size)
    depth = len(tiny_clip.model.visual.transformer.resblocks)
    grid = SinglePassEncoder(tiny_clip).grid(size, size)
    whole = [SinglePassEncoder(tiny_clip, blocks)(image, patch_coverage(masks[:1], grid))[0]
             for blocks in range(1, depth + 1)]
    for feature in whole[1:]:
        assert torch.allclose(feature, whole[0], atol=1e-5)


def test_a_region_feature_does_not_depend_on_the_other_regions(tiny_clip):
    encoder = SinglePassEncoder(tiny_clip, long_side=192)
    image, masks = random_image(48, 80, seed=2), region_masks(48, 80)
    grid = encoder.grid(48, 80)
    assert grid == (4, 6)  # 192 px long side: 115.2 x 192, rounded to whole 32 px patches
    coverage = patch_coverage(masks, grid)
    together = encoder(image, coverage)
    for region in range(len(masks)):
        alone = encoder(image, coverage[region : region + 1])
        assert torch.allclose(alone[0], together[region], atol=1e-5)
    reversed_order = encoder(image, coverage.flip(0))
    assert torch.allclose(reversed_order.flip(0), together, atol=1e-5)


def test_regions_beyond_one_forward_run_the_last_blocks_again_with_the_same_result(tiny_clip):
    encoder = SinglePassEncoder(tiny_clip)
    image, masks = random_image(64, 64, seed=3), region_masks(64, 64)
    coverage = patch_coverage(masks, encoder.grid(64, 64))
    together = encoder(image, coverage)
    encoder.regions.max_regions = 3
    assert torch.allclose(encoder(image, coverage), together, atol=1e-5)


def test_attention_bias_keeps_the_image_tokens_blind_to_the_regions():
    coverage = torch.tensor([[1.0, 0.5, 0.0, 0.25]])
    bias = attention_bias(coverage, image_tokens=5)
    assert torch.isinf(bias[:5, 5:]).all() and (bias[:5, :5] == 0).all()
    assert torch.isinf(bias[5, 0]) and bias[5, 5] == 0  # the region attends to itself, not to the class token
    assert torch.allclose(bias[5, 1:5].exp(), coverage[0])


def test_patch_coverage_counts_the_share_of_each_patch_inside():
    masks = torch.zeros((1, 32, 32), dtype=torch.bool)
    masks[0, :16, :8] = True
    assert patch_coverage(masks, (2, 2)).tolist() == [[0.5, 0.0, 0.0, 0.0]]
    assert input_grid(480, 640, 224, 16) == (10, 14)


def test_mask_prompts_and_towers_without_a_class_token_are_refused(tiny_clip, tmp_path):
    from dataengine.prompts import MaskPromptedViT

    prompted = dataclasses.replace(tiny_clip, prompts=MaskPromptedViT(tiny_clip.model.visual, depth=1))
    try:
        with pytest.raises(SinglePassError, match="does not use mask prompts"):
            SinglePassEncoder(prompted)
    finally:
        prompted.prompts.remove_hooks()
    pooled_by_average = VisionTransformer(image_size=32, patch_size=16, width=32, layers=2, heads=2, mlp_ratio=2.0,
                                          pool_type="avg", output_dim=16)
    with pytest.raises(SinglePassError, match="class token"):
        SinglePassRegions(pooled_by_average)
    with pytest.raises(SinglePassError, match="ModifiedResNet"):
        SinglePassRegions(ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, image_size=64, width=8))
    with pytest.raises(SinglePassError, match="1..2"):
        SinglePassRegions(tiny_clip.model.visual, blocks=3)


def test_the_encoder_setting_is_validated():
    config = MineConfig(out="x", match=MatchConfig(encoder="patches"))
    with pytest.raises(ConfigError, match="match.encoder: expected one of crops, single-pass"):
        config.validate()
    config = MineConfig(out="x", match=MatchConfig(encoder="single-pass", single_pass_long_side=0))
    with pytest.raises(ConfigError, match="single_pass_long_side"):
        config.validate()


def single_pass_job(coco_mini, out: Path, executor: str, images_per_batch: int, batch_size: int | None):
    config = coco_job(coco_mini, out, executor)
    config.limit = 40
    config.match.encoder = "single-pass"
    config.match.single_pass_long_side = 96
    config.images_per_batch = images_per_batch
    config.match.batch_size = batch_size
    return config


def test_single_pass_mining_gives_the_same_bytes_for_any_executor_and_batch_size(coco_mini, tmp_path):
    reference = single_pass_job(coco_mini, tmp_path / "reference", "local", 8, None)
    manifest = mine(reference)
    assert manifest["counts"]["pairs"] > 0 and manifest["config"]["match"]["encoder"] == "single-pass"
    mine(single_pass_job(coco_mini, tmp_path / "small-batches", "local", 3, 5))
    assert_same_output(tmp_path / "small-batches", tmp_path / "reference")
    on_ray = single_pass_job(coco_mini, tmp_path / "ray", "ray", 5, None)
    on_ray.ray.num_cpus = 2
    on_ray.ray.temp_dir = tempfile.mkdtemp(prefix="de-ray-")
    mine(on_ray)
    assert_same_output(tmp_path / "ray", tmp_path / "reference")


def test_mining_with_single_pass_gives_every_noun_a_pair_with_its_own_scores(coco_mini, tmp_path):
    """With no precision filter both encoders pair every noun; the scores are the encoder's own."""
    import pyarrow.parquet as pq

    crops = coco_job(coco_mini, tmp_path / "crops", "local")
    crops.limit = 10
    mine(crops)
    single = single_pass_job(coco_mini, tmp_path / "single", "local", 8, None)
    single.limit = 10
    mine(single)
    ours = pq.read_table(tmp_path / "single" / "index").to_pandas().set_index("key")
    theirs = pq.read_table(tmp_path / "crops" / "index").to_pandas().set_index("key")
    assert sorted(ours.index) == sorted(theirs.index)  # no filter: every noun gets a pair either way
    assert not np.allclose(ours.score, theirs.loc[ours.index].score)


@pytest.mark.parametrize(("clip", "blocks", "message"), [("RN50", None, "ModifiedResNet"),
                                                         ("dataengine-tiny", 9, "does not fit this tower of 2 blocks")])
def test_a_model_single_pass_cannot_use_is_refused_before_work_starts(coco_mini, tmp_path, clip, blocks, message):
    config = single_pass_job(coco_mini, tmp_path / "out", "local", 8, None)
    config.match.clip, config.match.single_pass_blocks = clip, blocks
    with pytest.raises(SinglePassError, match=message):
        mine(config)
    assert not (tmp_path / "out").exists()
