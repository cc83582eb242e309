"""`dataengine loop`: rounds of mining and training, each round mining with the model of the one before."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from test_resume import Crash, job

from dataengine.write import CorpusWriter
from finetune.config import TrainConfig
from finetune.rounds import LoopSettings, run_rounds
from finetune.train import Trainer


def training() -> TrainConfig:
    return TrainConfig(shards="-", out="-", clip="dataengine-tiny", mode="mpt", epochs=2, batch_size=8, workers=0,
                       prompt_depth=2, mpt_lr=0.5, log_every=1, checkpoint_every=2, progress=False, shuffle_buffer=16)


def run(coco_mini, out: Path, **settings) -> dict:
    mining = job(coco_mini, out / "unused", limit=6)
    mining.write.samples_per_shard = 2
    return run_rounds(LoopSettings(str(out), **settings), mining, training())


@pytest.fixture(scope="module")
def uninterrupted(coco_mini, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loop")
    run(coco_mini, out, rounds=2, max_pairs_per_noun=1)
    return out


def test_round_two_mines_with_round_ones_adapted_model(uninterrupted):
    record = json.loads((uninterrupted / "loop.json").read_text())
    first, second = record["rounds"]
    assert first["mined_with"] == "dataengine-tiny" and second["mined_with"] == str(uninterrupted / "round-1" / "train")
    prompts = pq.read_table(uninterrupted / "round-2" / "corpus" / "index", columns=["clip_prompts"])
    assert set(prompts.column("clip_prompts").to_pylist()) == {str(uninterrupted / "round-1" / "train" / "prompts.pt")}
    for round_ in (first, second):  # each round trains from the pretrained CLIP on its own filtered pairs
        summary = json.loads((Path(round_["train"]) / "train.json").read_text())
        assert summary["finished"] and summary["config"]["clip"] == "dataengine-tiny"
        assert summary["config"]["shards"] == str(Path(round_["corpus"]) / "shards")
        assert round_["corpus"].endswith("filtered") and round_["training"][0]["steps"] > 0
        mined = json.loads((Path(round_["corpus"]).parent / "corpus" / "manifest.json").read_text())["counts"]["pairs"]
        assert 0 < round_["pairs"] < mined and round_["reject_reasons"]["over_max_pairs_per_noun"] > 0
    scores = [pq.read_table(uninterrupted / f"round-{n}" / "corpus" / "index", columns=["score"]) for n in (1, 2)]
    assert scores[0].column("score").to_pylist() != scores[1].column("score").to_pylist()  # another model scored


def crash_in_round_two_mining(monkeypatch):
    original, calls = CorpusWriter.write_shard, []

    def crash(self, shard, samples):
        calls.append(shard)
        if "round-2" in str(self.out) and len(calls) >= 5:  # round 1 wrote 3 shards: the crash is in round 2
            raise Crash
        return original(self, shard, samples)

    monkeypatch.setattr(CorpusWriter, "write_shard", crash)
    return lambda: monkeypatch.setattr(CorpusWriter, "write_shard", original)


def crash_in_round_two_training(monkeypatch):
    original = Trainer._log

    def crash(self, *args):
        original(self, *args)
        if "round-2" in str(self.out) and self.state["global_step"] == 3:  # after the checkpoint of step 2
            raise Crash

    monkeypatch.setattr(Trainer, "_log", crash)
    return lambda: monkeypatch.setattr(Trainer, "_log", original)


@pytest.mark.parametrize("crash", [crash_in_round_two_mining, crash_in_round_two_training], ids=["mining", "training"])
def test_the_loop_resumes_after_a_crash_to_the_uninterrupted_result(coco_mini, uninterrupted, tmp_path, monkeypatch,
                                                                     crash):
    restore = crash(monkeypatch)
    with pytest.raises(Crash):
        run(coco_mini, tmp_path, rounds=2, max_pairs_per_noun=1)
    assert len(json.loads((tmp_path / "loop.json").read_text())["rounds"]) == 1
    restore()
    record = run(coco_mini, tmp_path, rounds=2, max_pairs_per_noun=1)
    expected = json.loads((uninterrupted / "loop.json").read_text())
    assert json.dumps(record).replace(str(tmp_path), "OUT") == json.dumps(expected).replace(str(uninterrupted), "OUT")
    for number in (1, 2):
        for corpus in ("corpus", "filtered"):
            assert_same_corpus(tmp_path, uninterrupted, f"round-{number}/{corpus}")
        a, b = (torch.load(out / f"round-{number}" / "train" / "prompts.pt", weights_only=True)["prompts"]
                for out in (tmp_path, uninterrupted))
        assert torch.equal(a, b)


def assert_same_corpus(out: Path, reference: Path, corpus: str) -> None:
    """The same corpus, up to the loop's folder in the paths that name round 1's model."""
    def members(root: Path) -> list[tuple[str, bytes]]:
        found = []
        for tar_path in sorted((root / corpus / "shards").glob("*.tar")):
            with tarfile.open(tar_path) as tar:
                found += [(m.name, tar.extractfile(m).read().replace(str(root).encode(), b"OUT")) for m in tar]
        return found

    assert members(out) == members(reference)
    for folder in ("index", "rejects"):
        rows = [json.dumps(pq.read_table(root / corpus / folder).to_pylist()).replace(str(root), "OUT")
                for root in (out, reference)]
        assert rows[0] == rows[1]


def test_cli_loop(coco_mini, tmp_path, capsys):
    from dataengine.cli import main

    args = ["loop", "--source", "coco", "--images", str(coco_mini / "images"), "--captions",
            str(coco_mini / "captions.json"), "--instances", str(coco_mini / "instances.json"), "--proposals",
            "annotations", "--clip", "dataengine-tiny", "--executor", "local", "--limit", "4", "--no-progress",
            "--out", str(tmp_path / "loop"), "--rounds", "1", "--train-set", "epochs=1", "--train-set", "batch_size=8",
            "--train-set", "workers=0"]
    assert main(args) == 0
    assert "round 1:" in capsys.readouterr().out
    assert json.loads((tmp_path / "loop" / "round-1" / "train" / "train.json").read_text())["config"]["epochs"] == 1
    assert main([*args, "--train-set", "epoch=2"]) == 2
    assert "--train-set" in capsys.readouterr().err
    assert main([*args, "--train-set", "clip=ViT-B-16"]) == 2
    assert "the loop sets it" in capsys.readouterr().err
    assert main([*args, "--train-set", "epochs=2"]) == 2  # round 1 finished with epochs=1: not reused, refused
    error = capsys.readouterr().err
    assert "round 1" in error and "epochs" in error and "remove" in error
    assert main([*args, "--clip", str(tmp_path / "loop" / "round-1" / "train")]) == 2
    assert "starts from a pretrained CLIP" in capsys.readouterr().err
