"""The committed small CLIP knows its world: a deterministic check of committed weights, not a timing.
Before anything is measured in the controlled world, its CLIP must name the objects it is asked about."""

from __future__ import annotations

import json

import pytest

from finetune.world.clip import (
    CHECK_SEED,
    COMPETENCE,
    close_up_images,
    main,
    stuff_images,
    text_separation,
    world_spec,
    zero_shot,
)
from finetune.world.scenes import STUFF, THINGS

TARGET, CLASS_TARGET = 90.0, 70.0  # issue 9: overall and for every thing, on a seed never trained on


@pytest.fixture(scope="module")
def world_clip():
    from dataengine.clip import load_clip

    return load_clip(world_spec(), "cpu")


@pytest.fixture(scope="module")
def close_ups(world_clip):
    return zero_shot(world_clip, *close_up_images(CHECK_SEED, 10), THINGS)


def test_it_names_every_thing_in_close_ups_of_a_seed_it_never_saw(close_ups):
    from finetune.world.clip import training_seeds

    assert CHECK_SEED not in training_seeds()
    assert close_ups["images"] == 240  # chance is 4.2%; the blind weights before had 3.3
    assert close_ups["accuracy"] >= TARGET, close_ups
    assert close_ups["min_class_accuracy"] >= CLASS_TARGET, close_ups["per_class"]


def test_it_names_stuff_in_whole_frame_scenes(world_clip):
    result = zero_shot(world_clip, *stuff_images(CHECK_SEED, 10), STUFF)
    assert result["accuracy"] >= 90, result


def test_its_text_tower_tells_the_things_apart(world_clip):
    assert text_separation(world_clip, THINGS) < 0.6  # the blind model before it had 0.98; these weights 0.36


def test_the_committed_competence_report_is_the_committed_weights_report(world_clip):
    report = json.loads(COMPETENCE.read_text())
    again = zero_shot(world_clip, *close_up_images(report["seed"], 20), THINGS)
    assert abs(again["accuracy"] - report["close_up_things"]["accuracy"]) <= 1.0
    masked = report["masked_regions"]
    # masked regions are the weak spot, as for real CLIP: above chance, below the close-ups
    assert report["chance"]["regions"] < masked["accuracy_things"] < report["close_up_things"]["accuracy"]


def test_the_check_command_prints_and_writes_the_report(tmp_path, capsys):
    assert main(["--check", "--report", str(tmp_path / "competence.json")]) == 0
    printed = capsys.readouterr().out
    assert "close-up zero-shot, 24 things" in printed and "masked-region accuracy" in printed
    report = json.loads((tmp_path / "competence.json").read_text())
    assert set(report["close_up_things"]["per_class"]) == set(THINGS)
    assert set(report["whole_frame_stuff"]["per_class"]) == set(STUFF)
    assert {"accuracy_things", "accuracy_stuff"} <= set(report["masked_regions"])


def test_training_from_scratch_starts_the_learnable_positions_as_2d_sin_cos():
    import open_clip
    import torch
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    from dataengine.clip import register_package_models
    from finetune.world.clip import MODEL, init_positions

    register_package_models()
    visual = open_clip.create_model(MODEL).visual
    assert visual.positional_embedding.abs().max() < 0.5  # open_clip's small random start
    init_positions(visual)
    rows, cols = visual.grid_size
    table = get_2d_sincos_pos_embed(visual.positional_embedding.shape[1], rows, cls_token=True)
    assert torch.equal(visual.positional_embedding.detach(), torch.from_numpy(table).float())
    assert visual.positional_embedding.requires_grad  # a start, not a fixed table: training moves it
    assert not torch.equal(visual.positional_embedding[1], visual.positional_embedding[2])
