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
