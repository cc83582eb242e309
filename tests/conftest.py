"""Shared fixtures. Tests run offline: Hugging Face hubs are off and caches live in a temp folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HF_HOME = tempfile.mkdtemp(prefix="dataengine-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = _HF_HOME
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO_MINI = SHARED_DATA / "coco-val-mini"


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """The 127-image COCO val sample in ../shared/data; tests that need it skip where it is absent."""
    if not (COCO_MINI / "captions.json").exists():
        pytest.skip(f"shared test data not found at {COCO_MINI}")
    return COCO_MINI


@pytest.fixture(scope="session")
def tiny_clip():
    from dataengine.clip import load_clip

    return load_clip("dataengine-tiny", "cpu", seed=0)


@pytest.fixture(scope="session")
def noun_extractor():
    from dataengine.config import NounConfig
    from dataengine.nouns import NounExtractor

    return NounExtractor(NounConfig())


def write_image(path: Path, size=(64, 48), color=(200, 30, 30), mode="RGB", fmt=None) -> Path:
    """A small real image file with a coloured square on it."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (20, 120, 200))
    ImageDraw.Draw(image).rectangle((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=color)
    image.convert(mode).save(path, format=fmt)
    return path


def swin_config():
    from transformers import SwinConfig

    return SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])


# COCO-panoptic-style names: three of them name VOC classes, one needs its suffix stripped
MASKFORMER_LABELS = ("person", "dog", "car", "sky-other-merged", "bus")


@pytest.fixture(scope="session")
def maskformer_dir(tmp_path_factory):
    import torch
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation, MaskFormerImageProcessor

    path = tmp_path_factory.mktemp("maskformer")
    torch.manual_seed(0)
    config = MaskFormerConfig(
        backbone_config=swin_config(), num_labels=5,
        id2label=dict(enumerate(MASKFORMER_LABELS)), label2id={n: i for i, n in enumerate(MASKFORMER_LABELS)}, mask_feature_size=32, fpn_feature_size=32,
        decoder_config=dict(model_type="detr", d_model=32, encoder_layers=1, decoder_layers=1,
                            encoder_attention_heads=1, decoder_attention_heads=1, num_queries=10,
                            encoder_ffn_dim=32, decoder_ffn_dim=32),
    )
    MaskFormerForInstanceSegmentation(config).save_pretrained(path)
    MaskFormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(path)
    return path
