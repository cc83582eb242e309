"""Training: losses, frozen weights, overfitting, resume, data position, CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from pairs import write_pair_shards

from dataengine.prompts import masked_patches
from finetune.config import TrainConfig, TrainConfigError
from finetune.shards import Corpus, PairStream, ShardError
from finetune.train import Trainer, clip_loss, train, vocabulary_loss


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_pair_shards(tmp_path_factory.mktemp("pairs") / "shards", pairs=48, per_shard=16)


def tiny(shards, out, **overrides) -> TrainConfig:
    settings = dict(shards=shards, out=str(out), clip="dataengine-tiny", epochs=2, batch_size=8, workers=0,
                    prompt_depth=2, log_every=1, progress=False, shuffle_buffer=32)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_clip_loss_masks_repeated_nouns():
    torch.manual_seed(0)
    regions, texts = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    labels = torch.tensor([0, 1, 0, 2])
    scale = torch.tensor(10.0)
    logits = scale * regions @ texts.t()
    # by hand: row 0 must not see column 2 (same noun), row 2 not column 0; same for the columns
    row_terms = [torch.logsumexp(logits[i, [j for j in range(4) if j == i or labels[j] != labels[i]]], 0) - logits[i, i]
                 for i in range(4)]
    col_terms = [torch.logsumexp(logits[[j for j in range(4) if j == i or labels[j] != labels[i]], i], 0) - logits[i, i]
                 for i in range(4)]
    expected = (torch.stack(row_terms).mean() + torch.stack(col_terms).mean()) / 2
    assert torch.allclose(clip_loss(regions, texts, labels, scale), expected, atol=1e-6)
    unmasked = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.t(), torch.arange(4))) / 2
    assert torch.allclose(clip_loss(regions, texts, labels, scale, mask_repeated=False), unmasked)


def test_vocabulary_loss_is_classification_over_all_nouns():
    regions = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    vocabulary = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    loss = vocabulary_loss(regions, vocabulary, torch.tensor([0, 1]), torch.tensor(100.0))
    assert loss < 1e-6  # both regions sit exactly on their noun, far ahead of the others


def test_mpt_leaves_clip_bit_identical_while_prompts_change(shards, tmp_path):
    trainer = Trainer(tiny(shards, tmp_path / "mpt", mode="mpt", epochs=1))
    before = {name: tensor.clone() for name, tensor in trainer.clip.model.state_dict().items()}
    trainer.run()
    after = trainer.clip.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    saved = torch.load(tmp_path / "mpt" / "prompts.pt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    initial = torch.randn(saved["prompts"].shape, generator=generator) * 0.02
    assert not torch.equal(saved["prompts"], initial)
    assert not (tmp_path / "mpt" / "model.pt").exists()
    visual = trainer.clip.model.visual  # the prompts' hooks are off the tower once the phase ends
    assert not visual.conv1._forward_hooks
    assert not any(block._forward_hooks for block in visual.transformer.resblocks)


def test_full_finetune_trains_the_visual_tower_only(shards, tmp_path):
    trainer = Trainer(tiny(shards, tmp_path / "ft", mode="ft", epochs=1, ft_lr=1e-3))
    before = {name: tensor.clone() for name, tensor in trainer.clip.model.state_dict().items()}
    trainer.run()
    after = torch.load(tmp_path / "ft" / "model.pt", weights_only=True)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("visual.") or name == "logit_scale" for name in changed)


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


# MPT keeps CLIP's logit scale frozen (1/0.07 in a fresh model), which bounds how far its loss can
# fall on the tiny model (it levels off near 1.0 from 1.5); full finetune learns the scale too.
@pytest.mark.parametrize("mode,lr,factor", [("ft", {"ft_lr": 2e-3}, 0.5), ("mpt", {"mpt_lr": 5e-2}, 0.75)])
def test_a_few_hundred_steps_overfit_a_small_set(shards, tmp_path, mode, lr, factor):
    small = write_pair_shards(tmp_path / "small", pairs=8, per_shard=8, seed=5)
    out = tmp_path / mode
    train(tiny(small, out, mode=mode, epochs=200, batch_size=8, warmup=0.0, grad_clip=0.0, **lr))
    losses = _losses(out)
    assert len(losses) == 200
    start, end = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert end < factor * start, (start, end)


@pytest.mark.parametrize("mode,stop", [("mpt", 5), ("ft", 3), ("ft+mpt", 8), ("ft+mpt", 15), ("ft+mpt", 12)])
def test_resume_continues_the_same_run(shards, tmp_path, mode, stop):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    overrides = dict(mode=mode, ft_lr=1e-3, checkpoint_every=2)
    train(tiny(shards, whole, **overrides))
    first = train(tiny(shards, parts, max_steps=stop, **overrides))
    assert not first["finished"]
    with pytest.raises(TrainConfigError, match="--resume"):
        train(tiny(shards, parts, **overrides))
    with pytest.raises(TrainConfigError, match="batch_size"):
        train(tiny(shards, parts, batch_size=4, **overrides), resume=True)
    assert train(tiny(shards, parts, **overrides), resume=True)["finished"]
    assert _losses(parts) == _losses(whole)
    for name in ("prompts.pt", "model.pt"):
        if (whole / name).exists():
            a, b = torch.load(whole / name, weights_only=True), torch.load(parts / name, weights_only=True)
            a, b = (a["prompts"], b["prompts"]) if name == "prompts.pt" else (a, b)
            assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else all(torch.equal(a[k], b[k]) for k in a))


def test_resume_after_a_crash_between_checkpoints(shards, tmp_path, monkeypatch):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    overrides = dict(mode="ft+mpt", ft_lr=1e-3, checkpoint_every=4)
    train(tiny(shards, whole, **overrides))
    original = Trainer._log

    def crash_at_step_14(self, *args):
        original(self, *args)
        if self.state["global_step"] == 14:  # logged, not yet checkpointed (the last checkpoint is step 12)
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(Trainer, "_log", crash_at_step_14)
    with pytest.raises(RuntimeError, match="simulated"):
        train(tiny(shards, crashed, **overrides))
    monkeypatch.setattr(Trainer, "_log", original)
    assert train(tiny(shards, crashed, **overrides), resume=True)["finished"]
    assert _losses(crashed) == _losses(whole)  # the steps after the checkpoint were redone, logged once
    a, b = (torch.load(folder / "prompts.pt", weights_only=True)["prompts"] for folder in (whole, crashed))
    assert torch.equal(a, b)


def test_resume_with_loader_workers_continues_the_same_run(shards, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    overrides = dict(mode="mpt", workers=2, batch_size=5, accumulate=2, checkpoint_every=3)
    train(tiny(shards, whole, **overrides))
    train(tiny(shards, parts, max_steps=3, **overrides))  # stops mid-epoch after an odd number of batches
    train(tiny(shards, parts, **overrides), resume=True)
    assert _losses(parts) == pytest.approx(_losses(whole), abs=1e-6)


def test_a_checkpoint_from_before_data_ranks_resumes_as_one_data_rank(shards, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    overrides = dict(mode="mpt", workers=2, batch_size=5, checkpoint_every=3)
    train(tiny(shards, whole, **overrides))
    train(tiny(shards, parts, max_steps=3, **overrides))
    checkpoint = parts / "checkpoints" / "last.pt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["config"]["data_ranks"] == 1 and set(saved["consumed"]) == {0}
    del saved["config"]["data_ranks"]  # as written before --data-ranks: one order, one worker position
    saved.update(consumed=saved["consumed"][0], next_worker=saved["next_worker"][0])
    torch.save(saved, checkpoint)
    train(tiny(shards, parts, **overrides), resume=True)
    assert _losses(parts) == pytest.approx(_losses(whole), abs=1e-6)


def test_bad_pairs_are_skipped_with_a_warning_and_empty_shard_sets_refused(tmp_path, caplog):
    import webdataset as wds

    write_pair_shards(tmp_path / "ok", pairs=8, per_shard=8)
    with wds.ShardWriter(str(tmp_path / "ok" / "pairs-000001-%d.tar"), maxcount=10, verbose=0) as sink:
        sink.write({"__key__": "broken_n0000", "jpg": b"not a jpeg", "txt": "square"})
    summary = train(tiny(str(tmp_path / "ok" / "*.tar"), tmp_path / "run", epochs=1, mode="mpt"))
    assert summary["finished"] and summary["phases"][0]["pairs"] == 8
    assert "broken_n0000" in caplog.text
    (tmp_path / "noimages").mkdir()
    with wds.ShardWriter(str(tmp_path / "noimages" / "pairs-%06d.tar"), maxcount=10, verbose=0) as sink:
        sink.write({"__key__": "a_n0000", "bmp": b"x", "txt": "square"})
    with pytest.raises(ShardError, match="no image"):
        train(tiny(str(tmp_path / "noimages"), tmp_path / "run2", epochs=1, mode="mpt"))


def test_loader_workers_see_every_pair_once_per_epoch(shards):
    corpus = Corpus.scan(shards)
    seen = []
    stream = PairStream(corpus.shards, corpus.vocabulary, 224, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), 5, epoch=1)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    for batch in loader:
        seen += batch["keys"]
        assert batch["images"].shape[1:] == (3, 224, 224) and batch["masks"].dtype == torch.bool
    assert sorted(seen) == sorted(set(seen)) and len(seen) == corpus.size == 48
    # resume: skipping what each worker already gave leaves exactly the rest
    skipped = PairStream(corpus.shards, corpus.vocabulary, 224, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), 5, epoch=1,
                         skip={0: 5, 1: 10})
    rest = [key for batch in torch.utils.data.DataLoader(skipped, batch_size=None, num_workers=2) for key in batch["keys"]]
    assert len(rest) == 48 - 15 and set(rest) < set(seen)


def test_masks_are_read_off_the_fill_colour_without_mask_files(tmp_path):
    with_masks = write_pair_shards(tmp_path / "a", pairs=8, per_shard=8, seed=2)
    without = write_pair_shards(tmp_path / "b", pairs=8, per_shard=8, seed=2, with_masks=False)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

    def batch(pattern):
        corpus = Corpus.scan(pattern)
        return next(iter(PairStream(corpus.shards, corpus.vocabulary, 224, mean, std, 8, shuffle_buffer=0)))

    exact, inferred = batch(with_masks)["masks"], batch(without)["masks"]
    iou = (exact & inferred).sum((1, 2)).float() / (exact | inferred).sum((1, 2)).float()
    assert iou.min() > 0.85  # JPEG blurs a pixel or two along every edge
    # what training uses is which patches are masked: nearly all agree (ViT-B/16's 14 x 14 grid)
    disagree = masked_patches(exact, (14, 14)) != masked_patches(inferred, (14, 14))
    assert disagree.float().mean() < 0.01


def test_engine_output_trains(coco_mini, tmp_path):
    from dataengine.config import MineConfig, from_dict
    from dataengine.pipeline import mine

    config = from_dict(MineConfig, {
        "source": {"type": "coco", "images": str(coco_mini / "images"), "captions": str(coco_mini / "captions.json"),
                   "instances": str(coco_mini / "instances.json")},
        "proposals": {"generator": "annotations"}, "match": {"clip": "dataengine-tiny"},
        "out": str(tmp_path / "corpus"), "limit": 6, "executor": "local", "progress": False,
        "write": {"samples_per_shard": 3}})
    mine(config)
    summary = train(tiny(str(tmp_path / "corpus" / "shards"), tmp_path / "run", mode="ft+mpt", epochs=1))
    assert summary["finished"] and summary["corpus"]["shards"] == 2
    assert (tmp_path / "run" / "prompts.pt").exists() and (tmp_path / "run" / "model.pt").exists()


def test_cli_finetune_and_its_errors(shards, tmp_path, capsys):
    from dataengine.cli import main

    out = tmp_path / "cli"
    args = ["finetune", "--shards", shards, "--clip", "dataengine-tiny", "--out", str(out), "--epochs", "1",
            "--batch-size", "16", "--workers", "0", "--prompt-depth", "2", "--no-progress"]
    assert main(args) == 0
    assert (out / "prompts.pt").exists() and json.loads((out / "train.json").read_text())["finished"]
    assert main(args) == 2  # a run is there: --resume or another folder
    assert "--resume" in capsys.readouterr().err
    assert main(["finetune", "--shards", str(tmp_path / "none-*.tar"), "--out", str(tmp_path / "x")]) == 2
    assert main(["finetune", "--shards", shards, "--out", str(tmp_path / "y"), "--mode", "lora"]) == 2
    assert main(["finetune", "--shards", shards, "--out", str(tmp_path / "z"), "--clip", "RN50",
                 "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ViT" in err
