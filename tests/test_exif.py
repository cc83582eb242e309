"""EXIF orientation against annotation masks: masks and pixels agree for every orientation 1..8.

Each image is stored 40 rows x 60 columns with one bright block off every axis of symmetry, and an
EXIF Orientation tag; the decoder turns it upright. The annotation is that block, drawn either on
the stored pixels (COCO's frame, the default) or on the upright view (`annotation_frame: exif`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from dataengine.config import ConfigError, MineConfig, ProposalConfig, SourceConfig
from dataengine.images import decode_sample
from dataengine.proposals.annotations import AnnotationProposals
from dataengine.sources import create_source

STORED_H, STORED_W = 40, 60
BLOCK = (4, 16, 6, 26)  # rows 4..15, columns 6..25 of the stored pixels: not symmetric in any axis
ORIENTATIONS = range(1, 9)


def stored_pixels() -> np.ndarray:
    pixels = np.zeros((STORED_H, STORED_W, 3), dtype=np.uint8)
    top, bottom, left, right = BLOCK
    pixels[top:bottom, left:right] = 255
    return pixels


def write_oriented_jpeg(path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored_pixels()).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def stored_polygon() -> list[list[float]]:
    top, bottom, left, right = BLOCK
    return [[left, top, right, top, right, bottom, left, bottom]]


def upright_rle(path: Path) -> dict:
    """The block as the upright view shows it (what an annotator of the EXIF-rotated view draws)."""
    from PIL import ImageOps

    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("L")) > 128
    rle = mask_utils.encode(np.asfortranarray(upright.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def coco_files(tmp_path: Path, orientation: int, frame: str, size_frame: str | None = None) -> SourceConfig:
    """One image; annotations drawn in `frame`; the JSON's width/height those of `size_frame` (default: frame)."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    path = write_oriented_jpeg(images / f"o{orientation}.jpg", orientation)
    size_frame = size_frame or frame
    swapped = orientation >= 5 and size_frame == "exif"
    width, height = (STORED_H, STORED_W) if swapped else (STORED_W, STORED_H)
    image = {"id": 1, "file_name": path.name, "width": width, "height": height}
    (tmp_path / "captions.json").write_text(json.dumps(
        {"images": [image], "annotations": [{"id": 1, "image_id": 1, "caption": "A white block."}]}))
    segmentation = stored_polygon() if frame == "stored" else upright_rle(path)
    (tmp_path / "instances.json").write_text(json.dumps(
        {"images": [image], "annotations": [{"id": 7, "image_id": 1, "segmentation": segmentation, "iscrowd": 0,
                                             "category_id": 1, "area": 1, "bbox": [0, 0, 1, 1]}]}))
    return SourceConfig(type="coco", images=str(images), captions=str(tmp_path / "captions.json"),
                        instances=str(tmp_path / "instances.json"))


def mined_mask(config: SourceConfig):
    sample = create_source(config).read(0, 1)[0]
    decode_sample(sample, config)
    proposals = AnnotationProposals(ProposalConfig()).generate(sample)
    assert len(proposals) == 1
    return sample.image, proposals.decode()[0]


def assert_mask_on_the_block(image: np.ndarray, mask: np.ndarray) -> None:
    bright = image.mean(axis=2) > 128
    assert mask.shape == bright.shape
    inter = np.logical_and(mask, bright).sum()
    union = np.logical_or(mask, bright).sum()
    assert inter / union > 0.9, f"mask and pixels disagree: IoU {inter / union:.2f}"


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_stored_frame_masks_follow_the_pixels(tmp_path, orientation):
    """COCO's default: masks on the stored pixels, turned with them (today: upside down for 3, flipped for 2/4)."""
    image, mask = mined_mask(coco_files(tmp_path, orientation, "stored"))
    upright_shape = (STORED_W, STORED_H) if orientation >= 5 else (STORED_H, STORED_W)
    assert image.shape[:2] == upright_shape
    assert_mask_on_the_block(image, mask)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_exif_frame_masks_are_kept_as_drawn(tmp_path, orientation):
    config = coco_files(tmp_path, orientation, "exif")
    config.annotation_frame = "exif"
    image, mask = mined_mask(config)
    assert_mask_on_the_block(image, mask)


@pytest.mark.parametrize("orientation", range(5, 9))
@pytest.mark.parametrize("drawn", ["stored", "exif"])
def test_json_sizes_decide_the_frame_where_a_quarter_turn_swaps_them(tmp_path, orientation, drawn):
    """The setting says the other frame, but the JSON's width/height fit only the frame it was drawn in."""
    config = coco_files(tmp_path, orientation, drawn)
    config.annotation_frame = "exif" if drawn == "stored" else "stored"
    image, mask = mined_mask(config)
    assert_mask_on_the_block(image, mask)


def test_sizes_that_fit_neither_frame_are_a_size_mismatch(tmp_path):
    from dataengine.images import ImageRejected

    config = coco_files(tmp_path, 6, "stored")
    captions = json.loads(Path(config.captions).read_text())
    captions["images"][0]["width"] = 99
    Path(config.captions).write_text(json.dumps(captions))
    sample = create_source(config).read(0, 1)[0]
    decode_sample(sample, config)
    with pytest.raises(ImageRejected) as error:
        AnnotationProposals(ProposalConfig()).generate(sample)
    assert error.value.reason == "size_mismatch" and "orientation 6" in error.value.detail


def test_annotation_frame_is_validated():
    config = MineConfig(out="x")
    config.source.annotation_frame = "rotated"
    with pytest.raises(ConfigError, match="source.annotation_frame"):
        config.validate()
