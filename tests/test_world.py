"""The controlled world: deterministic for a seed, ground truth consistent, readable by the engine."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from finetune.world.scenes import STUFF, THINGS, UNSEEN, generate_world, icon_mask


def _digest(folder) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(out, scenes=30, seed=7)
    return out


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(world, tmp_path):
    generate_world(tmp_path / "again", scenes=30, seed=7)
    generate_world(tmp_path / "other", scenes=30, seed=8)
    assert _digest(world) == _digest(tmp_path / "again")
    assert _digest(world) != _digest(tmp_path / "other")


def test_vocabulary_and_every_icon_is_drawable():
    assert len(THINGS) >= 24 and len(set(THINGS)) == len(THINGS) and set(UNSEEN) < set(THINGS)
    for noun in THINGS:
        mask = icon_mask(noun, 40, 20.0)
        assert 0.05 < mask.mean() < 0.95, noun


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_ground_truth_is_consistent(world, split):
    folder = world / split
    instances = json.loads((folder / "instances.json").read_text())
    captions = json.loads((folder / "captions.json").read_text())
    references = json.loads((folder / "references.json").read_text())
    images = {image["id"]: image for image in instances["images"]}
    by_id = {a["id"]: a for a in instances["annotations"]}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    assert images and all((folder / "images" / image["file_name"]).exists() for image in images.values())
    for annotation in instances["annotations"]:
        image = images[annotation["image_id"]]
        mask = mask_utils.decode({"size": annotation["segmentation"]["size"],
                                  "counts": annotation["segmentation"]["counts"].encode()})
        assert mask.shape == (image["height"], image["width"])  # inside the image
        assert mask.sum() == annotation["area"] > 0  # non-empty
    for image_id in images:  # instances of one image never overlap
        masks = [mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
                 for a in instances["annotations"] if a["image_id"] == image_id]
        assert np.stack(masks).sum(0).max() == 1
    for caption in captions["annotations"]:
        for start, end, noun, ids in references[str(caption["id"])]:
            word = caption["caption"][start:end]
            assert noun in THINGS + STUFF and word.startswith(noun[:3])
            for instance_id in ids:  # a reference points at a real instance of that noun, in that image
                assert by_id[instance_id]["image_id"] == caption["image_id"]
                assert names[by_id[instance_id]["category_id"]] == noun


def test_captions_vary_like_real_ones(world):
    captions = json.loads((world / "train" / "captions.json").read_text())["annotations"]
    references = json.loads((world / "train" / "references.json").read_text())
    texts = [c["caption"] for c in captions]
    assert len(set(texts)) > 0.8 * len(texts)
    refs = [r for c in captions for r in references[str(c["id"])]]
    assert any(not ids for _, _, _, ids in refs)  # objects that are not in the scene
    assert any(len(ids) > 1 for _, _, _, ids in refs)  # counts
    assert any(text.startswith(("a picture of", "a photo of")) for text in texts)


def test_the_engine_mines_the_world_unchanged(world, tmp_path, noun_extractor):
    from dataengine.config import MineConfig, from_dict
    from dataengine.pipeline import mine

    config = from_dict(MineConfig, {
        "source": {"type": "coco", "images": str(world / "train" / "images"),
                   "captions": str(world / "train" / "captions.json"),
                   "instances": str(world / "train" / "instances.json")},
        "proposals": {"generator": "annotations"}, "match": {"clip": "dataengine-tiny"},
        "out": str(tmp_path / "corpus"), "limit": 8, "executor": "local", "progress": False})
    manifest = mine(config)
    assert manifest["counts"]["images"] == 8 and manifest["counts"]["pairs"] > 0


def test_the_whole_loop_on_a_tiny_world(tmp_path):
    """World -> mining with a CLIP -> MPT and finetune on ground-truth pairs -> held-out benchmark."""
    from finetune.world.loop import LoopConfig, format_report, run_loop

    config = LoopConfig(out=str(tmp_path / "loop"), train_scenes=16, heldout_scenes=8, clip="dataengine-world",
                        proposals=("annotations", "classical"), modes=("mpt", "ft-gt"), epochs=1, batch_size=16,
                        filters=("mutual_best", "mutual_best + noun_quantile 0.5"),
                        score_thresholds=(0.0,), margin_thresholds=(0.0,), progress=False)
    report = run_loop(config)
    assert 0 <= report["nouns"]["precision"] <= 100 and 0 <= report["nouns"]["recall"] <= 100
    assert report["mining"]["annotations"]["pairs"] > 0
    assert 0 <= report["proposal_recall"]["recall"] <= 100
    rows = report["mining"]["annotations"]["precision"]
    assert rows[0]["filter"] == "all pairs" and rows[0]["pairs"] == report["mining"]["annotations"]["pairs"]
    labels = {"pretrained", "mpt", "mpt/mutual_best", "mpt/mutual_best + noun_quantile 0.5", "ft-gt"}
    for key in ("gt_masks", "two_stage"):
        assert set(report[key]["models"]) == labels
    assert [(row["proposals"], row["filter"]) for row in report["pairs"]] == [
        (p, f) for p in ("annotations", "classical") for f in ("none", "mutual_best", "mutual_best + noun_quantile 0.5")]
    postpassed = report["pairs"][2]  # the post-pass filters the mutual-best corpus
    assert postpassed["settings"] == {"mutual_best": True, "noun_quantile": 0.5}
    assert postpassed["pairs"] <= report["pairs"][1]["pairs"]
    assert (tmp_path / "loop" / "runs" / "mpt__mutual_best_noun_quantile_0.5" / "train.json").exists()
    for row in report["pairs"]:  # the documented keys of world_report.json
        assert {"pairs", "yield", "precision", "pairs_things", "precision_things", "pairs_stuff",
                "precision_stuff"} <= set(row)
    assert report["pairs"][0]["yield"] == 100.0 and report["pairs"][1]["pairs"] <= report["pairs"][0]["pairs"]
    assert set(report["models"]) == labels
    for summary in report["models"].values():
        for key in ("masked_region_accuracy", "mIoU"):
            assert set(summary[key]) == {"all", "things", "stuff", "seen", "unseen"}
    trained_on = report["models"]["mpt/mutual_best"]["trained_on"]
    assert trained_on["filter"] == "mutual_best" and trained_on["epochs"] >= report["models"]["mpt"]["trained_on"]["epochs"]
    assert "unseen" in format_report(report)
    assert (tmp_path / "loop" / "world_report.json").exists()
    assert Path(report["report_html"]) == tmp_path / "loop" / "corpus-annotations" / "report.html"
    assert Path(report["report_html"]).stat().st_size > 10_000


def test_small_clip_trainer_writes_loadable_weights_and_its_log(tmp_path):
    from dataengine.clip import load_clip
    from finetune.world import MODEL_CONFIG
    from finetune.world.clip import WEIGHTS, main

    assert main(["--scenes", "12", "--epochs", "1", "--batch-size", "6", "--device", "cpu", "--out", str(tmp_path)]) == 0
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["command"].startswith("python -m finetune.world.clip") and len(log["history"]) == 1
    assert 0 <= log["history"][0]["close_up_accuracy_monitor"] <= 100
    assert log["settings"]["terse_share"] == 0.5 and log["settings"]["close_up_share"] == 0.75
    config = json.loads(MODEL_CONFIG.read_text())["vision_cfg"]
    assert load_clip(f"dataengine-world@{tmp_path / 'dataengine-world.pt'}").image_size == config["image_size"]
    assert WEIGHTS.exists() and WEIGHTS.stat().st_size < 20 * 2**20  # the committed weights stay under 20 MB


def test_close_ups_show_one_object_of_the_asked_noun():
    from finetune.world.scenes import make_close_up

    rng = np.random.default_rng(0)
    for noun in THINGS:
        scene = make_close_up(rng, noun)
        things = [inst for inst in scene.instances if inst.is_thing]
        assert [inst.noun for inst in things] == [noun]
        ys, xs = np.nonzero(things[0].mask)
        assert max(np.ptp(ys), np.ptp(xs)) >= 0.45 * 128  # it fills much of the frame


def test_terse_captions_name_every_object_of_the_scene_and_nothing_else():
    from finetune.world.scenes import COLOURS, make_scene, write_terse_caption

    rng = np.random.default_rng(0)
    for _ in range(60):
        scene = make_scene(rng)
        things = {inst.noun: inst.id for inst in scene.instances if inst.is_thing}
        if not things:
            continue
        text, references = write_terse_caption(scene, rng)
        assert sorted(noun for _, _, noun, _ in references) == sorted(things)
        for start, end, noun, ids in references:
            assert text[start:end].startswith(noun[:3]) and things[noun] in ids
        assert not any(colour in text.split() for colour in COLOURS) and not any(s in text for s in STUFF)


def test_terse_captions_come_in_alt_text_frames_with_true_size_words():
    from finetune.world.scenes import (
        ALT_TEXT_FRAMES,
        make_close_up,
        make_scene,
        size_word,
        write_terse_caption,
    )

    rng = np.random.default_rng(1)
    frames, sizes = set(), set()
    for index in range(200):
        scene = make_close_up(rng, THINGS[index % len(THINGS)]) if index % 2 else make_scene(rng)
        things = [inst for inst in scene.instances if inst.is_thing]
        if not things:
            continue
        text, references = write_terse_caption(scene, rng)
        frames.update(frame for frame in ALT_TEXT_FRAMES if text.startswith(frame[0]) and text.endswith(frame[1]))
        for word in ("small", "medium", "large"):
            if word in text.split():
                sizes.add(word)
                named = text.split().index(word) + 1  # the size word sits right before its noun
                noun = next(n for _, _, n, _ in references if text.split()[named].startswith(n[:3]))
                assert word in {size_word(inst) for inst in things if inst.noun == noun}, (text, word)
        if index % 2:  # a close-up's object fills much of the frame
            assert size_word(things[0]) != "small"
    assert frames == set(ALT_TEXT_FRAMES) and sizes == {"small", "medium", "large"}


def test_the_pretraining_world_has_its_own_close_up_and_terse_shares(tmp_path):
    meta = generate_world(tmp_path, scenes=20, seed=3, heldout=0.0, close_up_share=1.0, terse_share=1.0)
    assert meta["close_up_share"] == 1.0 and meta["terse_share"] == 1.0
    instances = json.loads((tmp_path / "train" / "instances.json").read_text())
    things = [a["image_id"] for a in instances["annotations"] if a["colour"] is not None]
    assert sorted(things) == list(range(1, 21))  # exactly one object per scene
    captions = json.loads((tmp_path / "train" / "captions.json").read_text())["annotations"]
    assert not any(stuff in c["caption"] for c in captions for stuff in STUFF)


def _oracle_corpus(split, out, wrong_nouns: bool = False):
    """The index an oracle matcher writes with ground-truth masks as proposals: each caption noun that
    refers to instances gets one of them (with `wrong_nouns`, the noun of another class instead)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    instances = json.loads((split / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    images = {i["id"]: i for i in instances["images"]}
    by_id = {a["id"]: a for a in instances["annotations"]}
    vocabulary = sorted(set(names.values()))
    rows = []
    for refs in json.loads((split / "references.json").read_text()).values():
        for _, _, noun, ids in refs:
            if not ids:
                continue
            annotation = by_id[ids[0]]
            image = images[annotation["image_id"]]
            assert names[annotation["category_id"]] == noun
            if wrong_nouns:
                noun = vocabulary[(vocabulary.index(noun) + 1) % len(vocabulary)]
            rows.append({"image_id": str(image["id"]), "noun": noun, "image_height": image["height"],
                         "image_width": image["width"], "mask_counts": annotation["segmentation"]["counts"],
                         "score": 1.0, "margin": 1.0})
    (out / "index").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "index" / "index-000000.parquet")
    return len(rows)


def test_ground_truth_masks_with_an_oracle_classifier_give_full_pair_precision(world, tmp_path):
    from finetune.world.loop import pair_precision

    pairs = _oracle_corpus(world / "train", tmp_path / "oracle")
    row = pair_precision(tmp_path / "oracle", world / "train")[0]
    assert row["pairs"] == pairs > 0 and row["pairs_things"] > 0 and row["pairs_stuff"] > 0
    assert row["precision"] == row["precision_things"] == row["precision_stuff"] == 100.0
    assert row["precision_things_present"] == 100.0
    assert sum(total for _, total in row["per_noun"].values()) == pairs


def test_pair_precision_counts_a_wrong_noun_on_the_right_mask_as_wrong(world, tmp_path):
    from finetune.world.loop import pair_precision

    _oracle_corpus(world / "train", tmp_path / "wrong", wrong_nouns=True)
    row = pair_precision(tmp_path / "wrong", world / "train")[0]
    assert row["pairs"] > 0 and row["precision"] == 0.0


def test_the_demo_refuses_files_it_did_not_write_and_replaces_its_own(tmp_path, capsys):
    """`dataengine demo` deletes only what an earlier demo wrote into OUT: a user file in OUT/world or
    in a run folder stops it with one line (exit 2) and survives; a rerun over its own output works."""
    from dataengine.cli import main
    from finetune.world.loop import LoopConfig, run_loop

    out = tmp_path / "demo"
    (out / "world").mkdir(parents=True)
    (out / "world" / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "notes.txt" in error and "Traceback" not in error
    assert (out / "world" / "notes.txt").read_text() == "mine"
    (out / "world" / "notes.txt").unlink()

    config = LoopConfig(out=str(out), train_scenes=8, heldout_scenes=4, clip="dataengine-world", epochs=1,
                        batch_size=16, progress=False)
    first = run_loop(config)
    second = run_loop(config)  # into its own previous output
    assert second["world"] == first["world"] and second["mining"]["annotations"]["pairs"] > 0
    (out / "runs" / "mpt" / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(out), "--no-progress"]) == 2
    assert "keep.txt" in capsys.readouterr().err and (out / "runs" / "mpt" / "keep.txt").exists()
    assert (out / "world" / "world.json").exists()  # refused before anything was deleted


def test_the_precision_filters_reject_with_their_own_reasons_and_the_corpus_vocabulary_is_the_captions_nouns(
        world, tmp_path, noun_extractor):
    """Mining with every filter on: each noun that lost its pair says which filter took it, and the
    vocabulary a run resolved (its fingerprint's) is exactly the nouns the noun stage finds."""
    import pyarrow.parquet as pq

    from dataengine.config import MineConfig, from_dict
    from dataengine.pipeline import mine
    from finetune.world.loop import _coco

    split = world / "train"
    config = from_dict(MineConfig, {
        "source": {"type": "coco", "images": str(split / "images"), "captions": str(split / "captions.json"),
                   "instances": str(split / "instances.json")},
        "proposals": {"generator": "annotations"}, "match": {"clip": "dataengine-world", "mutual_best": True,
                                                             "min_mentions": 2, "vocabulary": "corpus",
                                                             "vocabulary_top_k": 1},
        "out": str(tmp_path / "corpus"), "limit": 12, "executor": "local", "progress": False})
    manifest = mine(config)
    reasons = manifest["counts"]["reject_reasons"]
    assert {"too_few_mentions", "not_mutual_best", "outside_vocabulary_top_k"} & set(reasons), reasons
    rejects = pq.read_table(tmp_path / "corpus" / "rejects").to_pandas()
    assert set(rejects.reason) <= {"too_few_mentions", "not_mutual_best", "outside_vocabulary_top_k", "no_pairs"}
    captions = _coco(split, "captions.json")
    first = {image["id"] for image in sorted(captions["images"], key=lambda image: image["id"])[:12]}
    texts = [c["caption"] for c in captions["annotations"] if c["image_id"] in first]
    expected = sorted({m.noun for mentions in noun_extractor.mentions(texts) for m in mentions})
    recorded = json.loads((tmp_path / "corpus" / "run.json").read_text())
    assert manifest["config"]["match"]["vocabulary_words"] == expected
    assert recorded["job"]["settings"]["match"]["vocabulary_words"] == expected  # part of the fingerprint


def test_the_loop_scaling_and_balance_runs_in_a_tiny_world(tmp_path):
    """The world's loop figures per round, the data-scaling table and the balance table, on a few scenes."""
    from finetune.world import rounds, scaling

    assert rounds.main(["--out", str(tmp_path / "rounds"), "--scenes", "12", "--rounds", "2", "--filter",
                        "mutual_best", "--no-progress"]) == 0
    result = json.loads((tmp_path / "rounds" / "rounds.json").read_text())
    first, second = result["rounds"]
    assert second["mined_with"] == first["train"] and set(result["pretrained"]) == set(rounds.ACCURACY_KEYS)
    for entry in (first, second):
        assert entry["mined_precision"]["pairs"] == entry["pairs"] > 0
        assert set(entry["masked_region_accuracy"]) == set(rounds.ACCURACY_KEYS)

    assert scaling.main(["--out", str(tmp_path / "scaling"), "--sizes", "6", "12", "--heldout", "6",
                         "--no-progress"]) == 0
    table = json.loads((tmp_path / "scaling" / "scaling.json").read_text())
    assert [size["scenes"] for size in table["sizes"]] == [6, 12]
    assert table["sizes"][0]["pairs"] < table["sizes"][1]["pairs"]  # the larger world begins with the smaller one

    from finetune.world import balance

    assert balance.main(["--out", str(tmp_path / "balance"), "--scenes", "12", "--cap", "2", "--threshold", "0.2",
                         "--no-progress"]) == 0
    runs = json.loads((tmp_path / "balance" / "balance.json").read_text())["runs"]
    plain, capped, balanced = runs["plain"], runs["cap 2"], runs["balance inverse"]
    assert capped["pairs_per_epoch"] < plain["pairs_per_epoch"] < balanced["pairs_per_epoch"]
    assert balanced["stuff_share"] < plain["stuff_share"]  # the five stuff nouns are the frequent ones


def test_the_pretraining_world_can_show_stuff_alone_and_name_stuff_in_alt_text():
    from finetune.world.scenes import STUFF_ARTICLES, make_scene, write_caption

    rng = np.random.default_rng(2)
    alone = 0
    for _ in range(80):
        scene = make_scene(rng, close_up_share=0.5, stuff_only_share=0.5)
        alone += not any(inst.is_thing for inst in scene.instances)
        text, references = write_caption(scene, rng, terse_share=1.0, alt_text_stuff_share=1.0)
        start, end, noun, ids = references[-1]  # the stuff is named last
        assert noun in STUFF and text[start:end] == noun
        assert any(text[:start].endswith(article) for article in STUFF_ARTICLES)
        assert [inst.noun for inst in scene.instances if inst.id in ids] == [noun]
    assert 20 < alone < 60


def test_the_demo_takes_filters_by_name_and_refuses_unknown_ones(tmp_path, capsys):
    from dataengine.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "--filter", "no such filter", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "unknown filter 'no such filter'" in error and "mutual_best + min_noun_margin 0.17" in error
    assert not (tmp_path / "d").exists()  # refused before anything was written
