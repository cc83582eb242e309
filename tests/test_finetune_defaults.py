"""`dataengine finetune` with nothing but its required flags works on the package's own models, and a
--prompt-depth that does not fit the tower says which depths do."""

from __future__ import annotations

import json

import pytest
from pairs import write_pair_shards

from dataengine.cli import main
from finetune.world.clip import WEIGHTS


@pytest.mark.parametrize("clip", ["dataengine-tiny", f"dataengine-world@{WEIGHTS}"])
def test_finetune_runs_with_its_defaults(clip, tmp_path, capsys):
    shards = write_pair_shards(tmp_path / "shards", pairs=16, per_shard=8, size=128)
    code = main(["finetune", "--shards", shards, "--clip", clip, "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["finished"] and (tmp_path / "run" / "prompts.pt").exists()


def test_a_prompt_depth_deeper_than_the_tower_names_the_depths_that_fit(tmp_path, capsys):
    shards = write_pair_shards(tmp_path / "shards", pairs=8, per_shard=8, size=64)
    code = main(["finetune", "--shards", shards, "--clip", "dataengine-tiny", "--prompt-depth", "3",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "--prompt-depth 1..2" in error


@pytest.mark.parametrize("first", [[], ["--prompt-depth", "2"], "saved-unresolved"])
def test_a_run_with_the_default_depth_resumes(first, tmp_path, capsys):
    """The default depth is resolved against the tower (2 blocks here) before it is saved or compared:
    a run stopped with --max-steps resumes with the same command, and so does one saved with the depth
    the default comes to (a run saved with 3 on a 12-block tower) or saved unresolved (None)."""
    import torch

    shards = write_pair_shards(tmp_path / "shards", pairs=16, per_shard=8, size=64)
    command = ["finetune", "--shards", shards, "--clip", "dataengine-tiny", "--out", str(tmp_path / "run"),
               "--no-progress", "--device", "cpu", "--workers", "0", "--batch-size", "4", "--epochs", "1",
               "--max-steps", "1"]
    assert main(command + (first if isinstance(first, list) else [])) == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "run" / "train.json").read_text())
    assert saved["config"]["prompt_depth"] == 2 and not saved["finished"]
    if first == "saved-unresolved":  # as the runs written while the default stayed None in the checkpoint
        checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
        state = torch.load(checkpoint, weights_only=True)
        state["config"]["prompt_depth"] = None
        torch.save(state, checkpoint)
    assert main(command + ["--resume"]) == 0, capsys.readouterr().err  # the same command resumes
    assert main(command[:-2] + ["--resume"]) == 0, capsys.readouterr().err  # and on to the end
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["finished"] and summary["phases"][-1]["steps"] == 4
