"""Mining with an adapted model: `--clip` takes a finetune output folder, whose mask prompts are
applied to every region with the region's crop mask, exactly as the trainer applies them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pairs import write_pair_shards
from PIL import Image
from pycocotools import mask as mask_utils
from test_finetune import tiny
from test_resume import job

from dataengine.clip import NounEmbeddings, load_adapted_clip, load_clip
from dataengine.config import ConfigError
from dataengine.pipeline import mine
from dataengine.regions import normalize, prepare_region_pil
from finetune.train import train

TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def mpt_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("adapted")
    shards = write_pair_shards(folder / "shards", pairs=32, per_shard=16)
    run = folder / "mpt"
    train(tiny(shards, run, mode="mpt", epochs=2, mpt_lr=0.5))
    return run


def reference_scores(coco_mini: Path, index, wrapped, plain) -> tuple[np.ndarray, np.ndarray]:
    """Each pair rescored from the source image, one region at a time (PIL crops): with the
    prompt-wrapped tower, and with the plain tower."""
    images = {str(i["id"]): i for i in json.loads((coco_mini / "captions.json").read_text())["images"]}
    text = NounEmbeddings(plain)
    with_prompts, without = [], []
    for row in index.to_pylist():
        image = Image.open(coco_mini / "images" / images[row["image_id"]]["file_name"]).convert("RGB")
        rle = {"size": [row["image_height"], row["image_width"]], "counts": row["mask_counts"].encode()}
        crop, crop_mask = prepare_region_pil(image, mask_utils.decode(rle).astype(bool), row["box"],
                                             plain.image_size, plain.fill_rgb)
        pixels = normalize(torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].contiguous(), plain.mean, plain.std)
        noun = text([row["noun"]])[0]
        with torch.no_grad():
            prompted = torch.nn.functional.normalize(wrapped.prompts(pixels, torch.from_numpy(crop_mask)[None]), dim=-1)
        with_prompts.append(float(prompted[0] @ noun))
        without.append(float(plain.encode_images(pixels)[0] @ noun))
    return np.array(with_prompts), np.array(without)


def test_mining_with_a_finetune_folder_scores_with_its_prompt_wrapped_tower(coco_mini, mpt_run, tmp_path):
    config = job(coco_mini, tmp_path / "corpus", limit=6)
    config.match.clip = str(mpt_run)
    manifest = mine(config)
    index = pq.read_table(tmp_path / "corpus" / "index")
    assert index.num_rows > 0
    wrapped, plain = load_adapted_clip(str(mpt_run)), load_clip("dataengine-tiny")
    assert wrapped.prompts is not None
    prompted, unprompted = reference_scores(coco_mini, index, wrapped, plain)
    recorded = np.array(index.column("score").to_pylist())
    np.testing.assert_allclose(recorded, prompted, atol=TOLERANCE)  # PIL's crops differ from torch's by a level
    effect = np.abs(prompted - unprompted)
    assert effect.max() > 10 * TOLERANCE, effect.max()  # the prompts change what the regions look like

    prompts = str(mpt_run / "prompts.pt")
    assert manifest["models"]["clip"] == str(mpt_run) and manifest["models"]["prompts"] == prompts
    assert set(manifest["models"]["files_sha256"]) == {"prompts.pt"}
    assert set(index.column("clip_prompts").to_pylist()) == {prompts}
    with __import__("tarfile").open(tmp_path / "corpus" / "shards" / "pairs-000000.tar") as tar:
        meta = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".json"))).read())
    assert meta["models"]["prompts"] == prompts


def test_a_folder_trained_again_is_another_model_and_not_resumed_into(coco_mini, mpt_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("train.json", "prompts.pt"):
        (run / name).write_bytes((mpt_run / name).read_bytes())
    config = job(coco_mini, tmp_path / "corpus", limit=6)
    config.match.clip = str(run)
    mine(config)
    saved = torch.load(run / "prompts.pt", weights_only=True)
    saved["prompts"] = saved["prompts"] + 1.0
    torch.save(saved, run / "prompts.pt")
    with pytest.raises(ConfigError, match="models.files_sha256"):
        mine(config)


def test_a_folder_that_is_not_a_finetune_run_is_refused_before_work_starts(coco_mini, tmp_path):
    (tmp_path / "run").mkdir()
    config = job(coco_mini, tmp_path / "corpus", limit=2)
    config.match.clip = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="not a finetune output folder"):
        mine(config)
    assert not (tmp_path / "corpus").exists()


def test_single_pass_refuses_a_folder_with_mask_prompts_before_work_starts(coco_mini, mpt_run, tmp_path):
    config = job(coco_mini, tmp_path / "corpus", limit=2)
    config.match.clip, config.match.encoder = str(mpt_run), "single-pass"
    with pytest.raises(ConfigError, match="single-pass does not use mask prompts"):
        mine(config)
    assert not (tmp_path / "corpus").exists()


def test_single_pass_mining_with_a_finetuned_folder_scores_with_its_weights(coco_mini, tmp_path):
    from dataengine.single_pass import SinglePassEncoder, patch_coverage

    shards = write_pair_shards(tmp_path / "shards", pairs=32, per_shard=16)
    run = tmp_path / "ft"
    train(tiny(shards, run, mode="ft", epochs=1, ft_lr=1e-2))
    config = job(coco_mini, tmp_path / "corpus", limit=4)
    config.match.clip, config.match.encoder = str(run), "single-pass"
    mine(config)
    index = pq.read_table(tmp_path / "corpus" / "index").to_pylist()
    images = {str(i["id"]): i for i in json.loads((coco_mini / "captions.json").read_text())["images"]}
    recorded = [row["score"] for row in index]
    for clip, same in ((load_adapted_clip(str(run)), True), (load_clip("dataengine-tiny", seed=0), False)):
        encoder, text = SinglePassEncoder(clip), NounEmbeddings(clip)
        scores = []
        for row in index:
            image = Image.open(coco_mini / "images" / images[row["image_id"]]["file_name"]).convert("RGB")
            pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()
            rle = {"size": [row["image_height"], row["image_width"]], "counts": row["mask_counts"].encode()}
            mask = torch.from_numpy(mask_utils.decode(rle).astype(bool))[None]
            feature = encoder(pixels, patch_coverage(mask, encoder.grid(*mask.shape[1:])))
            scores.append(float(feature[0] @ text([row["noun"]])[0]))
        assert np.allclose(scores, recorded, atol=TOLERANCE) == same
