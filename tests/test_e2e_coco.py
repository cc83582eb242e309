"""End to end on ../shared/data/coco-val-mini: annotation and classical proposals, every image
accounted for, shards read back by webdataset, Hugging Face datasets and Ray Data, schemas hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from readback import check_corpus

from dataengine.config import MineConfig, SourceConfig
from dataengine.pipeline import mine


def coco_config(coco_mini, out, generator: str) -> MineConfig:
    source = SourceConfig(type="coco", images=str(coco_mini / "images"), captions=str(coco_mini / "captions.json"),
                          instances=str(coco_mini / "instances.json"))
    config = MineConfig(source=source, out=str(out), progress=False, executor="local")
    config.match.clip = "dataengine-tiny"
    config.proposals.generator = generator
    config.write.samples_per_shard = 50  # several shards, the last one partial
    return config


@pytest.fixture(scope="module")
def annotations_run(coco_mini, tmp_path_factory):
    config = coco_config(coco_mini, tmp_path_factory.mktemp("annotations"), "annotations")
    config.match.one_to_one = True
    config.match.max_pairs_per_image = 4  # exercises noun-level rejects
    mine(config)
    return config


@pytest.fixture(scope="module")
def classical_run(coco_mini, tmp_path_factory):
    config = coco_config(coco_mini, tmp_path_factory.mktemp("classical"), "classical")
    config.proposals.max_proposals = 24
    config.proposals.classical.work_size = 192  # keeps the test quick; the full-size path is the same code
    mine(config)
    return config


def image_keys(config) -> set[str]:
    """From the raw captions file, not from the source under test."""
    return {f"{image['id']:012d}" for image in json.loads(Path(config.source.captions).read_text())["images"]}


@pytest.mark.parametrize("run", ["annotations_run", "classical_run"])
def test_every_image_accounted_for_and_schemas_hold(run, request):
    config = request.getfixturevalue(run)
    corpus = check_corpus(Path(config.out), image_keys(config))
    assert corpus["manifest"]["counts"]["pairs"] > 0
    assert len(list(Path(config.out, "shards").glob("*.tar"))) == 3  # 127 images, 50 per shard
    assert not Path(config.out, "_tmp").exists()


def test_annotation_pairs_use_ground_truth_masks(annotations_run):
    from pycocotools import mask as mask_utils

    corpus = check_corpus(Path(annotations_run.out), image_keys(annotations_run))
    instances = json.loads(Path(annotations_run.source.instances).read_text())
    areas = {}
    for annotation in instances["annotations"]:
        areas.setdefault(annotation["image_id"], []).append(annotation)
    reasons = {row["reason"] for row in corpus["rejects"] if row["level"] == "noun"}
    assert reasons <= {"no_free_proposal", "over_max_pairs"}
    per_image = {}
    for sample in corpus["samples"]:
        meta = json.loads(sample["json"])
        assert meta["generator"] == "annotations"
        rle = {"size": meta["mask"]["size"], "counts": meta["mask"]["counts"].encode()}
        assert int(mask_utils.area(rle)) == meta["area"]
        per_image.setdefault(meta["image_key"], []).append(meta["proposal_id"])
    for proposals in per_image.values():
        assert len(proposals) <= 4 and len(set(proposals)) == len(proposals)  # max_pairs and one_to_one held


def test_shards_read_back_with_hf_datasets(classical_run):
    import datasets

    tars = sorted(str(p) for p in Path(classical_run.out, "shards").glob("*.tar"))
    dataset = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train",
                                    cache_dir=str(Path(classical_run.out).parent / "hf-cache"))
    manifest = json.loads(Path(classical_run.out, "manifest.json").read_text())
    assert len(dataset) == manifest["counts"]["pairs"]
    row = dataset[0]
    assert row["jpg"].size == (224, 224) and row["mask.png"].size == (224, 224)
    assert row["json"]["noun"] == row["txt"]


def test_shards_read_back_with_ray_data(classical_run):
    import tempfile

    import ray

    tars = sorted(str(p) for p in Path(classical_run.out, "shards").glob("*.tar"))
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must stay under 107 bytes
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False, configure_logging=False)
    try:
        rows = ray.data.read_webdataset(tars, decoder=None).take_all()
    finally:
        ray.shutdown()
    manifest = json.loads(Path(classical_run.out, "manifest.json").read_text())
    assert len(rows) == manifest["counts"]["pairs"]
    keys = {row["__key__"] for row in rows}
    assert len(keys) == len(rows)


def test_classical_pairs_are_masked_crops(classical_run):
    """Outside-mask pixels of the stored crop are the CLIP mean; the stored mask is binary."""
    import io

    import numpy as np
    from PIL import Image

    corpus = check_corpus(Path(classical_run.out), image_keys(classical_run))
    checked = 0
    for sample in corpus["samples"]:
        crop = np.asarray(Image.open(io.BytesIO(sample["jpg"])), dtype=np.float64)
        mask = np.asarray(Image.open(io.BytesIO(sample["mask.png"])))
        assert crop.shape == (224, 224, 3) and set(np.unique(mask)) <= {0, 255}
        outside = crop[mask == 0]
        if len(outside) > 500:  # JPEG blurs edges: compare the bulk of the background
            assert np.abs(np.median(outside, axis=0) - np.array([122.8, 116.7, 104.1])).max() < 4
            checked += 1
    assert checked > len(corpus["samples"]) // 4
