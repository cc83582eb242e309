"""Untrusted .pt files never run code: every option that loads one refuses a pickle whose
unpickling would write a marker file, with one line and exit status 2, and touches no output."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from pairs import write_pair_shards

from dataengine.cli import main
from dataengine.config import ConfigError


class Payload:
    """Unpickling this calls open(marker, 'w'): the file appears only if the pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "pwned"


def plant(path, marker, zip_format: bool = True):
    """A malicious .pt at `path`: torch.save's zip format, or a bare pickle (the legacy format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if zip_format:
        torch.save({"state_dict": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    return path


def refused(code: int, capsys, marker) -> str:
    captured = capsys.readouterr()
    assert not marker.exists(), "the pickle ran"
    assert code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out, captured.err
    return lines[0]


def mine_job(root, clip: str, executor: str) -> list[str]:
    from conftest import write_image

    images = root / "images"
    images.mkdir(exist_ok=True)
    write_image(images / "a.png")
    (root / "captions.jsonl").write_text('{"image": "a.png", "caption": "A red box on a table."}\n')
    return ["mine", "--source", "folder", "--images", str(images), "--captions", str(root / "captions.jsonl"),
            "--clip", clip, "--executor", executor, "--proposals", "classical", "--no-progress",
            "--out", str(root / "out")]


@pytest.mark.parametrize("executor", ["local", "ray"])
@pytest.mark.parametrize("zip_format", [True, False])
def test_mine_refuses_a_malicious_clip_checkpoint_before_touching_out(tmp_path, capsys, marker, executor, zip_format):
    evil = plant(tmp_path / "weights.pt", marker, zip_format)
    line = refused(main(mine_job(tmp_path, f"dataengine-tiny@{evil}", executor)), capsys, marker)
    assert "--clip" in line and ("could run code" in line if zip_format else "weights-only unpickler" in line)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_mine_refuses_a_file_that_is_no_checkpoint_before_touching_out(tmp_path, capsys, marker, executor):
    notes = tmp_path / "notes.txt.pt"
    notes.write_text("my notes, not weights\n")
    line = refused(main(mine_job(tmp_path, f"dataengine-tiny@{notes}", executor)), capsys, marker)
    assert "not a PyTorch checkpoint" in line and str(notes) in line and "could run code" not in line
    assert not (tmp_path / "out").exists()


def test_mine_refuses_weights_of_another_model_before_touching_out(tmp_path, capsys, marker):
    from finetune.world.clip import WEIGHTS

    line = refused(main(mine_job(tmp_path, f"dataengine-tiny@{WEIGHTS}", "ray")), capsys, marker)
    assert "--clip: cannot load" in line
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_pair_shards(tmp_path_factory.mktemp("pairs") / "shards", pairs=8, per_shard=8, size=64)


def finetune_args(shards, out) -> list[str]:
    return ["finetune", "--shards", shards, "--clip", "dataengine-tiny", "--out", str(out), "--epochs", "1",
            "--batch-size", "4", "--workers", "0", "--prompt-depth", "2", "--no-progress", "--device", "cpu"]


def test_finetune_refuses_a_planted_text_embedding_cache(shards, tmp_path, capsys, marker):
    plant(tmp_path / "out" / "text_embeddings.pt", marker)
    line = refused(main(finetune_args(shards, tmp_path / "out")), capsys, marker)
    assert "text_embeddings.pt" in line and "could run code" in line


def test_finetune_resume_refuses_a_planted_checkpoint(shards, tmp_path, capsys, marker):
    plant(tmp_path / "out" / "checkpoints" / "last.pt", marker)
    line = refused(main(finetune_args(shards, tmp_path / "out") + ["--resume"]), capsys, marker)
    assert "--resume" in line and "last.pt" in line


def test_finetune_resume_refuses_a_planted_model_of_a_finished_phase(shards, tmp_path, capsys, marker):
    out = tmp_path / "out"
    args = finetune_args(shards, out) + ["--mode", "ft+mpt", "--max-steps", "3"]
    assert main(args) == 0  # stops in the MPT phase: the resumption reloads the finetuned model.pt
    capsys.readouterr()
    plant(out / "model.pt", marker)
    line = refused(main(args + ["--resume"]), capsys, marker)
    assert "model.pt" in line


def bench_args(tmp_path) -> list[str]:
    return ["bench", "--dataset", "world", "--root", str(tmp_path), "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "result.json")]


def test_bench_refuses_malicious_prompts(tmp_path, capsys, marker):
    evil = plant(tmp_path / "prompts.pt", marker)
    line = refused(main(bench_args(tmp_path) + ["--clip", "dataengine-tiny", "--prompts", str(evil)]), capsys, marker)
    assert "prompts.pt" in line
    assert not (tmp_path / "result.json").exists()


def test_bench_refuses_a_run_folder_with_a_malicious_model(tmp_path, capsys, marker):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.json").write_text(json.dumps({"config": {"clip": "dataengine-tiny", "seed": 0},
                                                "architecture": "dataengine-tiny", "finished": True}))
    plant(run / "model.pt", marker)
    line = refused(main(bench_args(tmp_path) + ["--model", f"evil={run}"]), capsys, marker)
    assert "model.pt" in line and "could run code" in line


def test_the_world_clip_loaders_refuse_a_malicious_checkpoint(tmp_path, capsys, marker):
    from dataengine.clip import load_clip
    from finetune.world.clip import main as world_main

    evil = plant(tmp_path / "dataengine-world.pt", marker)
    with pytest.raises(ConfigError, match="could run code"):
        load_clip(f"dataengine-world@{evil}")
    refused(world_main(["--check", "--weights", str(evil), "--device", "cpu"]), capsys, marker)
    out = tmp_path / "trained"
    line = refused(world_main(["--init", str(evil), "--scenes", "4", "--epochs", "1", "--device", "cpu",
                               "--out", str(out)]), capsys, marker)
    assert "--init" in line and not out.exists()


def test_honest_checkpoints_still_load(tmp_path, tiny_clip):
    """The same loaders take what the package itself writes: an open_clip state dict."""
    from dataengine.clip import check_clip_checkpoint, load_clip

    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    check_clip_checkpoint(f"dataengine-tiny@{path}")
    loaded = load_clip(f"dataengine-tiny@{path}")
    for name, tensor in tiny_clip.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
