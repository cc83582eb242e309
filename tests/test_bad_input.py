"""Bad input ends as reject rows with their reasons, and the run goes on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from readback import check_corpus

from dataengine.config import MineConfig, SourceConfig
from dataengine.pipeline import mine


def photo_like(path: Path, seed: int) -> Path:
    """An image with a few distinct shapes, so that classical proposals find regions in it."""
    rng = np.random.default_rng(seed)
    image = np.zeros((96, 128, 3), dtype=np.uint8)
    image[:] = (40, 90, 160)
    for _ in range(3):
        y, x = rng.integers(0, 60), rng.integers(0, 90)
        image[y : y + 30, x : x + 35] = rng.integers(0, 256, 3)
    Image.fromarray(image).save(path)
    return path


def build_bad_folder(root: Path) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir()
    photo_like(images / "good.jpg", 0)
    photo_like(images / "second_good.png", 1)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    whole = (images / "good.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (images / "empty.jpg").write_bytes(b"")
    photo_like(images / "empty_caption.jpg", 2)
    photo_like(images / "no_nouns.jpg", 3)
    rows = [
        {"image": "good.jpg", "caption": "A red box next to a blue square on the table."},
        {"image": "corrupt.jpg", "caption": "A dog on a sofa."},
        {"image": "truncated.jpg", "caption": "A cat under a chair."},
        {"image": "missing.jpg", "caption": "A car on the street."},
        {"image": "empty.jpg", "caption": "A boat in the water."},
        {"image": "empty_caption.jpg", "caption": "   "},
        {"image": "no_nouns.jpg", "caption": "It is what it is, isn't it?"},
        {"image": "second_good.png", "caption": "A green ball and a yellow kite."},
    ]
    table = root / "captions.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return images, table


def test_every_bad_input_is_a_reject_row_and_the_run_goes_on(tmp_path):
    images, table = build_bad_folder(tmp_path)
    config = MineConfig(source=SourceConfig(type="folder", images=str(images), captions=str(table)),
                        out=str(tmp_path / "out"), progress=False, executor="local", images_per_batch=3)
    config.match.clip = "dataengine-tiny"
    config.write.samples_per_shard = 4
    manifest = mine(config)
    table_rows = [json.loads(line)["image"] for line in table.read_text().splitlines()]
    corpus = check_corpus(Path(config.out), {Path(name).stem for name in table_rows})
    reasons = {row["key"]: row["reason"] for row in corpus["rejects"] if row["level"] == "image"}
    assert reasons == {
        "corrupt": "decode_error",
        "truncated": "decode_error",
        "missing": "missing_file",
        "empty": "empty_file",
        "empty_caption": "no_caption",
        "no_nouns": "no_nouns",
    }
    assert {row["image_key"] for row in corpus["index"]} == {"good", "second_good"}
    assert manifest["counts"]["rejected_images"] == 6
    details = {row["key"]: row["detail"] for row in corpus["rejects"]}
    assert "truncated" in details["truncated"].lower() or "OSError" in details["truncated"]
    assert "missing.jpg" in details["missing"]


def test_stage_errors_and_all_empty_proposals_become_reject_rows(tmp_path, coco_mini):
    """A broken instance annotation makes the annotations generator raise on that one image only;
    an image whose instance masks are all empty (degenerate polygons) has no proposals."""
    captions = json.loads((coco_mini / "captions.json").read_text())
    instances = json.loads((coco_mini / "instances.json").read_text())
    keep = [image["id"] for image in captions["images"][:4]]
    captions["images"] = [i for i in captions["images"] if i["id"] in keep]
    captions["annotations"] = [a for a in captions["annotations"] if a["image_id"] in keep]
    instances["images"] = [i for i in instances["images"] if i["id"] in keep]
    instances["annotations"] = [a for a in instances["annotations"] if a["image_id"] in keep]
    broken = next(a for a in instances["annotations"] if a["image_id"] == keep[1])
    broken["segmentation"] = {"counts": "not an rle", "size": [1, 1]}
    for annotation in instances["annotations"]:
        if annotation["image_id"] == keep[3]:
            annotation["segmentation"] = [[10.0, 10.0, 10.0, 10.0, 10.0, 10.0]]  # a zero-area polygon
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    source = SourceConfig(type="coco", images=str(coco_mini / "images"), captions=str(tmp_path / "captions.json"),
                          instances=str(tmp_path / "instances.json"))
    config = MineConfig(source=source, out=str(tmp_path / "out"), progress=False, executor="local")
    config.match.clip = "dataengine-tiny"
    config.proposals.generator = "annotations"
    mine(config)
    corpus = check_corpus(Path(config.out), {f"{image_id:012d}" for image_id in keep})
    errors = [row for row in corpus["rejects"] if row["reason"] == "stage_error"]
    assert [row["key"] for row in errors] == [f"{keep[1]:012d}"]
    assert errors[0]["stage"] == "proposals" and errors[0]["detail"].startswith("ValueError")
    empty = [row for row in corpus["rejects"] if row["reason"] == "no_proposals"]
    assert [row["key"] for row in empty] == [f"{keep[3]:012d}"]
    assert {row["image_key"] for row in corpus["index"]} == {f"{keep[0]:012d}", f"{keep[2]:012d}"}
