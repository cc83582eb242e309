"""The batched matcher against the plain one-region-at-a-time PIL reference, on the same model."""

from __future__ import annotations

import glob

import numpy as np
import pytest
import torch
from PIL import Image

from dataengine.config import MatchConfig, ProposalConfig
from dataengine.images import load_sample_image
from dataengine.match import RegionMatcher, _size_chunks, select_pairs
from dataengine.proposals import create_generator
from dataengine.records import NounMention, Proposals, Sample
from dataengine.reference import reference_similarity
from dataengine.regions import prepare_region_pil, prepare_regions, resize_batched, resize_each, resize_images

TOLERANCE = 5e-3
NOUNS = ["man", "dog", "table", "car", "tree", "pizza", "sky"]


def synthetic_image(height=150, width=230, seed=0, smooth=True) -> np.ndarray:
    """A random colour field plus shapes. Smooth is photo-like: PIL clips bicubic overshoot between
    its two passes, so on pure noise the two resizers differ by many levels at isolated pixels.
    Noise makes regions look more different to a tiny random CLIP (clearer argmax decisions)."""
    rng = np.random.default_rng(seed)
    cell = 10 if smooth else 1
    coarse = rng.integers(0, 256, size=(height // cell, width // cell, 3), dtype=np.uint8)
    image = np.array(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    image[20:90, 30:120] = (220, 40, 40)
    image[60:140, 140:220] = (30, 200, 60)
    return image


def random_masks(height, width, count, seed=0) -> np.ndarray:
    """Blobs of assorted sizes and aspect ratios, from a single pixel to the whole image."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, height, width), dtype=bool)
    for i in range(count - 2):
        h, w = int(rng.integers(1, height)), int(rng.integers(1, width))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        masks[i, y : y + h, x : x + w] = rng.random((h, w)) > 0.35
        masks[i, y, x] = masks[i, y + h - 1, x + w - 1] = True
    masks[-2, 5, 7] = True  # one pixel
    masks[-1] = True  # whole image
    return masks


def sample_with(image: np.ndarray, masks: np.ndarray, key="img") -> Sample:
    sample = Sample(key, key, key, [])
    sample.image = image
    sample.height, sample.width = image.shape[:2]
    sample.proposals = Proposals.from_masks(masks, np.ones(len(masks)), "test")
    sample.nouns = [NounMention(noun, "0", 0, 1) for noun in NOUNS]
    return sample


@pytest.mark.parametrize("resize", [resize_each, resize_batched], ids=["cpu-each", "gpu-batched"])
def test_region_crops_match_pil_crops(resize):
    image = synthetic_image()
    masks = random_masks(*image.shape[:2], 12)
    proposals = Proposals.from_masks(masks, np.ones(len(masks)), "test")
    fill = (122.8, 116.7, 104.1)
    fill_8bit = torch.tensor([123, 117, 104], dtype=torch.uint8)
    crops = resize(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(proposals.decode()),
                   torch.from_numpy(proposals.boxes_xywh), 224, fill_8bit)
    picture = Image.fromarray(image)
    for i, (mask, box) in enumerate(zip(proposals.decode(), proposals.boxes_xywh, strict=True)):
        reference, _ = prepare_region_pil(picture, mask, box, 224, fill)
        difference = np.abs(crops[i].permute(1, 2, 0).numpy().astype(int) - reference.astype(int))
        assert difference.mean() < 0.5, f"region {i}: mean difference {difference.mean():.3f} levels"
        assert (difference > 1).mean() < 0.005, f"region {i}: {(difference > 1).sum()} pixels differ by more than 1 level"


def test_both_resize_paths_agree_and_masks_follow_pil_nearest():
    image = synthetic_image()
    masks = random_masks(*image.shape[:2], 9, seed=3)
    proposals = Proposals.from_masks(masks, np.ones(len(masks)), "test")
    tensors = (torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(proposals.decode()),
               torch.from_numpy(proposals.boxes_xywh))
    fill_8bit = torch.tensor([123, 117, 104], dtype=torch.uint8)
    each, batched = resize_each(*tensors, 224, fill_8bit), resize_batched(*tensors, 224, fill_8bit)
    assert (each.int() - batched.int()).abs().float().mean() < 0.5
    _, crop_masks = prepare_regions(*tensors, 224, (122.8, 116.7, 104.1))
    picture = Image.fromarray(image)
    for i, (mask, box) in enumerate(zip(proposals.decode(), proposals.boxes_xywh, strict=True)):
        _, reference_mask = prepare_region_pil(picture, mask, box, 224, (122.8, 116.7, 104.1))
        assert (crop_masks[i].numpy() != reference_mask).mean() < 0.02  # nearest: same up to rounding of centres


def test_whole_images_are_resized_as_their_full_frame_region():
    images = torch.from_numpy(np.stack([synthetic_image(128, 128, seed) for seed in range(3)])).permute(0, 3, 1, 2)
    resized = resize_images(images, 64)
    whole = torch.ones((1, 128, 128), dtype=torch.bool)
    for image, result in zip(images, resized, strict=True):
        crop, _ = prepare_regions(image, whole, torch.tensor([[0, 0, 128, 128]]), 64, (122.8, 116.7, 104.1))
        assert torch.equal(crop[0], result)
    assert resize_images(images, 128) is images  # already the model's size: untouched


def assert_matches_reference(matcher, clip, sample):
    batched = matcher.region_features([sample])[0]
    text = matcher.noun_embeddings(NOUNS)
    similarity = (batched @ text.T).numpy()
    reference = reference_similarity(clip, matcher.noun_embeddings, sample.image, sample.proposals, NOUNS)
    assert np.abs(similarity - reference).max() <= TOLERANCE
    top2 = -np.sort(-reference, axis=0)[:2]
    decisive = (top2[0] - top2[1]) >= TOLERANCE
    assert decisive.any(), "no noun with a clear winner: the argmax check would be empty"
    assert (similarity.argmax(0) == reference.argmax(0))[decisive].all()


def test_matcher_agrees_with_reference_on_synthetic_regions(tiny_clip):
    matcher = RegionMatcher(tiny_clip, MatchConfig(batch_size=5))  # several forwards, a partial last one
    image = synthetic_image(smooth=False)
    assert_matches_reference(matcher, tiny_clip, sample_with(image, random_masks(*image.shape[:2], 17)))


def test_matcher_agrees_with_reference_on_coco_proposals(tiny_clip, coco_mini):
    matcher = RegionMatcher(tiny_clip, MatchConfig(batch_size=16))
    generator = create_generator("classical", ProposalConfig(max_proposals=30))
    for path in sorted(glob.glob(str(coco_mini / "images" / "*.jpg")))[:2]:
        image = load_sample_image(path, None, 10**9)
        sample = sample_with(image, np.zeros((0, *image.shape[:2]), bool))
        sample.proposals = generator.generate(sample)
        assert_matches_reference(matcher, tiny_clip, sample)


def test_features_do_not_depend_on_batch_composition(tiny_clip):
    """A sample's scores are the same alone or batched with others (stable keys and pairs across executors)."""
    first = sample_with(synthetic_image(seed=1), random_masks(150, 230, 9, seed=1), "a")
    second = sample_with(synthetic_image(seed=2), random_masks(150, 230, 13, seed=2), "b")
    alone = RegionMatcher(tiny_clip, MatchConfig(batch_size=64)).region_features([first])[0]
    together = RegionMatcher(tiny_clip, MatchConfig(batch_size=4)).region_features([second, first])[1]
    assert torch.allclose(alone, together, atol=1e-5)


def test_match_fills_pairs_with_crops_of_the_chosen_proposal(tiny_clip):
    sample = sample_with(synthetic_image(), random_masks(150, 230, 8, seed=5))
    matcher = RegionMatcher(tiny_clip, MatchConfig(max_pairs_per_image=3))
    matcher.match([sample])
    assert len(sample.pairs) == 3 and len(sample.noun_rejects) == len(NOUNS) - 3
    assert {r.reason for r in sample.noun_rejects} == {"over_max_pairs"}
    fill = (122.8, 116.7, 104.1)
    picture = Image.fromarray(sample.image)
    masks, boxes = sample.proposals.decode(), sample.proposals.boxes_xywh
    for pair in sample.pairs:
        assert pair.crop.shape == (224, 224, 3) and pair.crop.dtype == np.uint8
        reference, reference_mask = prepare_region_pil(picture, masks[pair.proposal_index], boxes[pair.proposal_index], 224, fill)
        assert np.abs(pair.crop.astype(int) - reference.astype(int)).mean() < 0.5
    similarity = (matcher.region_features([sample])[0] @ matcher.noun_embeddings(NOUNS).T).numpy()
    expected = select_pairs(similarity, MatchConfig(max_pairs_per_image=3)).pairs
    assert [(p.noun.noun, p.proposal_index) for p in sample.pairs] == [(NOUNS[c.noun_index], c.proposal_index) for c in expected]


def test_text_embeddings_are_cached_once_per_noun(tiny_clip):
    matcher = RegionMatcher(tiny_clip, MatchConfig())
    calls = []
    encode = tiny_clip.encode_texts
    try:
        tiny_clip.encode_texts = lambda texts: calls.append(len(texts)) or encode(texts)
        matcher.noun_embeddings(["dog", "cat", "dog"])
        matcher.noun_embeddings(["cat", "bird"])
    finally:
        tiny_clip.encode_texts = encode
    # each new noun encoded once, 14 templates each, in chunks padded to a fixed 16 nouns
    assert calls == [16 * 14, 16 * 14] and set(matcher.noun_embeddings.cache) == {"dog", "cat", "bird"}
    embeddings = matcher.noun_embeddings(["dog", "bird"])
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("max_regions", [1, 4, 64])
def test_size_chunks_cover_every_region_once(max_regions):
    boxes = torch.tensor([[0, 0, w, h] for w, h in [(5, 5), (600, 400), (30, 20), (640, 480), (1, 1), (100, 90)]])
    chunks = _size_chunks(boxes, max_regions)
    assert sorted(torch.cat(chunks).tolist()) == list(range(len(boxes)))
    assert all(len(chunk) <= max_regions for chunk in chunks)


def test_features_are_bit_identical_whatever_shares_the_forward(tiny_clip):
    """Forwards always have the same shape (padded), so with one CPU thread a region's features are
    the same bits whether its image is matched alone or after another one (whose leftover regions
    then share its forwards)."""
    torch.set_num_threads(1)
    sample = sample_with(synthetic_image(seed=4, smooth=False), random_masks(150, 230, 11, seed=4), "a")
    other = sample_with(synthetic_image(seed=5, smooth=False), random_masks(150, 230, 5, seed=5), "b")
    alone = RegionMatcher(tiny_clip, MatchConfig(batch_size=8)).region_features([sample])[0]
    after = RegionMatcher(tiny_clip, MatchConfig(batch_size=8)).region_features([other, sample])[1]
    assert torch.equal(alone, after)


def test_openai_weights_get_the_quick_gelu_they_were_trained_with():
    from dataengine.clip import _trained_with_quick_gelu

    assert _trained_with_quick_gelu("ViT-B-16", "openai")
    assert not _trained_with_quick_gelu("ViT-B-16", "laion2b_s34b_b88k")
    assert not _trained_with_quick_gelu("ViT-B-16-quickgelu", "openai")
    assert not _trained_with_quick_gelu("dataengine-tiny", None)
