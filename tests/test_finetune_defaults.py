"""`dataengine finetune` with nothing but its required flags works on the package's own models, and a
--prompt-depth that does not fit the tower says which depths do."""

from __future__ import annotations

import json

import pytest
from pairs import write_pair_shards

from dataengine.cli import main
from finetune.world_clip import WEIGHTS


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
