"""Mask prompt tuning wrapper on a tiny open_clip ViT."""

from __future__ import annotations

import pytest
import torch

from dataengine.prompts import MaskPromptedViT, MPTError, masked_patches, save_prompts, wrap_with_prompts


@pytest.fixture()
def visual():
    from dataengine.clip import load_clip

    return load_clip("dataengine-tiny", "cpu", seed=1).model.visual


def test_patch_is_masked_only_when_all_its_pixels_are(visual):
    masks = torch.zeros(1, 224, 224, dtype=torch.bool)
    masks[0, 5, 5] = True  # one visible pixel keeps patch (0, 0)
    masks[0, 32:64, 32:64] = True  # patch (1, 1) fully visible
    masked = masked_patches(masks, (7, 7)).reshape(7, 7)
    assert not masked[0, 0] and not masked[1, 1]
    assert masked.sum() == 49 - 2


def test_without_masked_patches_the_output_is_the_plain_towers(visual):
    wrapper = MaskPromptedViT(visual, depth=2)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        plain = visual(images)
        assert torch.allclose(wrapper(images, None), plain, atol=1e-6)
        assert torch.allclose(wrapper(images, torch.ones(3, 224, 224, dtype=torch.bool)), plain, atol=1e-6)


def test_prompts_replace_masked_patches_at_every_level(visual):
    wrapper = MaskPromptedViT(visual, depth=2)
    images = torch.randn(2, 3, 224, 224)
    masks = torch.zeros(2, 224, 224, dtype=torch.bool)
    masks[:, :112, :112] = True
    with torch.no_grad():
        plain = visual(images)
        prompted = wrapper(images, masks)
        assert not torch.allclose(prompted, plain)
        for level in range(2):  # each prompt level changes the output
            before = wrapper(images, masks)
            # a random change: a constant added to every channel would vanish in the next LayerNorm
            wrapper.prompts[level] += torch.randn(wrapper.prompts[level].shape, generator=torch.Generator().manual_seed(level))
            assert not torch.allclose(wrapper(images, masks), before)
        # a fully masked-out input depends on the image only through the class token path: the
        # patch contents are gone, so two different images give the same output
        empty = torch.zeros(2, 224, 224, dtype=torch.bool)
        out = wrapper(images, empty)
        assert torch.allclose(out[0], out[1], atol=1e-5)


def test_class_token_is_never_replaced(visual):
    wrapper = MaskPromptedViT(visual, depth=2)
    seen = []
    hook = visual.transformer.resblocks[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        visual(images)
        wrapper(images, torch.zeros(1, 224, 224, dtype=torch.bool))
    hook.remove()
    plain, prompted = seen
    layout = (lambda x: x) if visual.transformer.batch_first else (lambda x: x.transpose(0, 1))
    plain, prompted = layout(plain), layout(prompted)
    assert torch.allclose(prompted[:, 1:], wrapper.prompts[1].expand_as(prompted[:, 1:]))
    assert not torch.allclose(prompted[:, 0], wrapper.prompts[1][0])


def test_depth_is_checked_and_non_vit_towers_are_refused(visual):
    with pytest.raises(MPTError, match="depth"):
        MaskPromptedViT(visual, depth=len(visual.transformer.resblocks) + 1)
    with pytest.raises(MPTError, match="ViT"):
        MaskPromptedViT(torch.nn.Linear(3, 3))


def test_prompt_file_round_trip(visual, tmp_path):
    wrapper = MaskPromptedViT(visual, depth=2, generator=torch.Generator().manual_seed(3))
    save_prompts(tmp_path / "prompts.pt", wrapper, "dataengine-tiny")
    loaded = wrap_with_prompts(visual, tmp_path / "prompts.pt")
    assert loaded.depth == 2 and torch.equal(loaded.prompts, wrapper.prompts)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MPTError):
        wrap_with_prompts(visual, tmp_path / "bad.pt")
