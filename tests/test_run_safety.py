"""A run never deletes what it did not write, leaves no lock behind, writes every promised file,
and survives one sample's failure or running out of memory; a stage leaves process state alone."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dataengine.cli import main
from dataengine.config import ConfigError, MineConfig, ProposalConfig, SourceConfig
from dataengine.output import LOCK_FILE, OutputFolder
from dataengine.pipeline import mine
from dataengine.records import Caption, Proposals, Sample
from dataengine.schema import arrow_schema
from dataengine.stage import Stage
from dataengine.write import CorpusWriter, Models


def folder_job(root: Path, images: int = 2) -> MineConfig:
    folder = root / "images"
    folder.mkdir(exist_ok=True)
    rows = []
    for number in range(images):
        picture = np.full((48, 64, 3), (30, 90, 160), dtype=np.uint8)
        picture[10:30, 8 + number * 4 : 40 + number * 4] = (220, 40, 40)
        Image.fromarray(picture).save(folder / f"img{number}.png")
        rows.append({"image": f"img{number}.png", "caption": "A red box on a blue table."})
    (root / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = SourceConfig(type="folder", images=str(folder), captions=str(root / "captions.jsonl"))
    config = MineConfig(source=source, out=str(root / "out"), progress=False, executor="local")
    config.match.clip = "dataengine-tiny"
    return config


def fake_job(samples: int = 16, per_shard: int = 8) -> dict:
    return {"settings": {"write": {"samples_per_shard": per_shard}}, "models": {}, "dataengine_version": "x",
            "device": "cpu", "input": {"samples": samples, "keys_sha256": "0"}}


def fake_run(out: Path, shards: int = 2) -> None:
    """What a run of dataengine leaves: run.json, every shard's files, the manifest."""
    folder = OutputFolder(out)
    out.mkdir(parents=True, exist_ok=True)
    folder.prepare(fake_job(shards * 8), overwrite=False)
    writer = CorpusWriter(out, Models("c", "p", "n"))
    for shard in range(shards):
        writer.write_shard(shard, [])
    writer.write_manifest({"ok": True})


# --- --overwrite deletes only what dataengine wrote --------------------------------------------------


def test_overwrite_refuses_to_delete_a_user_file_in_a_folder_of_ours(tmp_path):
    out = tmp_path / "out"
    fake_run(out)
    (out / "shards" / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="did not write.*precious.txt"):
        OutputFolder(out).prepare(fake_job(), overwrite=True)
    assert (out / "shards" / "precious.txt").read_text() == "keep me"
    assert (out / "shards" / "pairs-000000.tar").exists()  # refused before anything was deleted


def test_overwrite_refuses_a_folder_of_someone_else(tmp_path):
    out = tmp_path / "theirs"
    (out / "index").mkdir(parents=True)
    (out / "index" / "pairs-000000.parquet").write_text("their own file, named like ours")
    (out / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="did not write"):
        OutputFolder(out).prepare(fake_job(), overwrite=True)
    assert (out / "index" / "pairs-000000.parquet").exists() and (out / "manifest.json").exists()


def test_overwrite_past_a_damaged_run_record_deletes_only_files_of_our_own_form(tmp_path):
    out = tmp_path / "out"
    fake_run(out)
    (out / "run.json").write_text('{"job": [')
    (out / "stats" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="notes.txt"):
        OutputFolder(out).prepare(fake_job(), overwrite=True)
    (out / "stats" / "notes.txt").unlink()
    OutputFolder(out).prepare(fake_job(), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def test_overwrite_deletes_exactly_what_the_previous_run_wrote(tmp_path):
    out = tmp_path / "out"
    fake_run(out, shards=3)
    (out / "notes.txt").write_text("mine")  # beside the output's entries: left alone
    assert json.loads((out / "run.json").read_text())["writes"]["shards"] == 3  # its run names what it writes
    OutputFolder(out).prepare(fake_job(8), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "run.json"]
    assert json.loads((out / "run.json").read_text())["writes"]["shards"] == 1


def test_overwrite_through_the_cli_keeps_the_user_file(tmp_path, capsys):
    config = folder_job(tmp_path)
    mine(config)
    out = Path(config.out)
    (out / "shards" / "precious.txt").write_text("keep me")
    argv = ["mine", "--source", "folder", "--images", config.source.images, "--captions", config.source.captions,
            "--clip", "dataengine-tiny", "--executor", "local", "--no-progress", "--out", str(out), "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "precious.txt" in err and "Traceback" not in err
    assert (out / "shards" / "precious.txt").read_text() == "keep me"
    assert not (out / LOCK_FILE).exists()


def test_a_resume_with_other_execution_only_settings_is_accepted(tmp_path, capsys):
    """A lower --mask-pixels-per-chunk (to get past out-of-memory) or another Ray connect timeout
    changes how the job runs, never what it writes: the finished corpus resumes."""
    config = folder_job(tmp_path)
    mine(config)
    out = Path(config.out)
    argv = ["mine", "--source", "folder", "--images", config.source.images, "--captions", config.source.captions,
            "--clip", "dataengine-tiny", "--executor", "local", "--no-progress", "--out", str(out)]
    for extra in (["--mask-pixels-per-chunk", "4096"], ["--ray-connect-timeout", "5"]):
        assert main(argv + extra) == 0, capsys.readouterr().err
    record = json.loads((out / "run.json").read_text())  # as a version before this one recorded it
    record["job"]["settings"]["mask_pixels_per_chunk"] = 1 << 20
    (out / "run.json").write_text(json.dumps(record))
    assert main(argv) == 0, capsys.readouterr().err
    assert main(argv + ["--min-score", "0.5"]) == 2  # a setting that shapes the output is still refused
    assert "other settings (settings.match.min_score)" in capsys.readouterr().err
    for name in ("mutual_best", "min_mentions", "vocabulary_top_k"):  # settings added after it was mined
        del record["job"]["settings"]["match"][name]
    (out / "run.json").write_text(json.dumps(record))
    assert main(argv) == 0, capsys.readouterr().err  # they take their defaults there: it resumes
    assert main(argv + ["--mutual-best"]) == 2
    assert "settings.match.mutual_best" in capsys.readouterr().err


def test_demo_refuses_to_replace_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "precious.txt").write_text("keep me")
    assert main(["demo", "--photos", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "precious.txt" in err
    assert (out / "shards" / "precious.txt").read_text() == "keep me"
    assert not (out / "input").exists()  # refused before the demo wrote its input
    other = tmp_path / "demo2"
    (other / "input").mkdir(parents=True)
    (other / "input" / "captions.jsonl").write_text('{"image": "mine.png", "caption": "my own data"}\n')
    assert main(["demo", "--photos", "--out", str(other), "--no-progress"]) == 2
    assert "captions.jsonl" in capsys.readouterr().err
    assert "my own data" in (other / "input" / "captions.jsonl").read_text()


# --- every shard has its typed rejects file ----------------------------------------------------------


def test_a_shard_without_rejects_still_gets_its_typed_rejects_file(tmp_path):
    stats = CorpusWriter(tmp_path, Models("c", "p", "n")).write_shard(0, [])
    assert stats["rejects"] == "rejects/rejects-000000.parquet"
    table = pq.read_table(tmp_path / "rejects" / "rejects-000000.parquet")
    assert table.num_rows == 0 and table.schema.equals(arrow_schema("rejects"), check_metadata=False)
    frame = pd.read_parquet(tmp_path / "rejects")
    assert list(frame.columns) == arrow_schema("rejects").names and len(frame) == 0


# --- the lock goes away on every way out -------------------------------------------------------------


def test_the_lock_is_removed_when_a_run_fails_and_when_it_succeeds(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="boom"), OutputFolder(out).locked():
        assert (out / LOCK_FILE).exists()
        raise RuntimeError("boom")
    assert not (out / LOCK_FILE).exists()
    with OutputFolder(out).locked():
        pass
    assert not (out / LOCK_FILE).exists() and out.is_dir()


def test_a_mining_run_that_fails_after_the_lock_leaves_no_lock(tmp_path, monkeypatch):
    from dataengine.executors.local import LocalExecutor

    config = folder_job(tmp_path)

    def failing(self, *args):
        raise RuntimeError("the run fails half way")

    monkeypatch.setattr(LocalExecutor, "run", failing)
    with pytest.raises(RuntimeError, match="half way"):
        mine(config)
    assert (Path(config.out) / "run.json").exists() and not (Path(config.out) / LOCK_FILE).exists()


# --- the batch fallback retries from the samples' state before the batch ------------------------------


def samples(count: int) -> list[Sample]:
    made = []
    for number in range(count):
        sample = Sample(f"s{number}", str(number), "here", [Caption("0", "a dog")])
        sample.image = np.zeros((4, 4, 3), dtype=np.uint8)
        made.append(sample)
    return made


class ChangesThenFails(Stage):
    """A batched stage that changes every sample (as a later step would: image=None) and then fails."""

    name = "changes"

    def process_batch(self, batch):
        for sample in batch:
            if sample.image is None:
                raise ValueError("no image")  # what a retry on the changed sample would run into
            sample.image = None
            sample.nouns.append("changed")
        if len(batch) > 1:
            raise RuntimeError("the batch as a whole fails")


def test_the_batch_fallback_retries_each_sample_from_its_unchanged_state():
    batch = ChangesThenFails()(samples(3))
    assert [sample.reject for sample in batch] == [None, None, None]
    assert all(sample.nouns == ["changed"] for sample in batch)  # done once, from the state before


# --- out of memory: one sample is rejected, the run goes on --------------------------------------------


class OutOfMemoryOn(Stage):
    name = "hungry"

    def __init__(self, key: str, error: type[BaseException] = MemoryError, batched: bool = True):
        self.key, self.error, self.calls = key, error, []
        if not batched:
            self.process_batch = super().process_batch

    def process_batch(self, batch):
        for sample in batch:
            self.process(sample)

    def process(self, sample):
        self.calls.append(sample.key)
        if sample.key == self.key:
            if self.error is RuntimeError:  # a real allocation that fails: torch's CPU allocator
                torch.empty(1 << 52, dtype=torch.uint8)
            raise self.error("out of memory (test)")
        sample.nouns.append("done")


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("error", [MemoryError, torch.cuda.OutOfMemoryError, RuntimeError])
def test_a_sample_that_runs_out_of_memory_alone_is_rejected_and_the_others_survive(error, batched):
    stage = OutOfMemoryOn("s1", error, batched)
    batch = stage(samples(3))
    assert batch[1].reject is not None and batch[1].reject.reason == "out_of_memory"
    assert batch[1].reject.stage == "hungry"
    assert batch[0].alive and batch[2].alive and batch[0].nouns == ["done"] and batch[2].nouns == ["done"]
    assert stage.calls.count("s1") >= 2  # retried alone once before the reject


def test_out_of_memory_in_a_whole_run_is_a_reject_row(tmp_path, monkeypatch):
    from dataengine.stages import MatchStage

    config = folder_job(tmp_path, images=3)
    real = MatchStage.process_batch

    def hungry(self, batch):
        if any(sample.key.endswith("img1.png") or "img1" in sample.key for sample in batch):
            raise MemoryError("one huge image")
        return real(self, batch)

    monkeypatch.setattr(MatchStage, "process_batch", hungry)
    manifest = mine(config)
    rows = pq.read_table(Path(config.out) / "rejects").to_pylist()
    assert [row["reason"] for row in rows if row["level"] == "image"] == ["out_of_memory"]
    assert manifest["counts"]["images"] == 3 and manifest["counts"]["images_with_pairs"] == 2


def many_regions(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(blocks).resize((width, height), Image.NEAREST))


def test_classical_upsampling_of_a_large_image_stays_within_the_mask_budget():
    """Kept masks go back to full size (here 2000 x 2000) two at a time under a budget of two masks:
    held all at once, 100 of them would take 100 x 4 MB, twice (booleans, then their uint8 copy)."""
    from dataengine.proposals.classical import ClassicalProposals, _upsample, _upsampled

    rng = np.random.default_rng(0)
    small = np.zeros((100, 40, 50), dtype=bool)
    for number in range(100):
        y, x = rng.integers(0, 30), rng.integers(0, 40)
        small[number, y : y + 10, x : x + 10] = True
    kept = Proposals.from_masks(small, np.linspace(1, 0, 100), "classical")
    shape = (2000, 2000)
    pixels = shape[0] * shape[1]
    tracemalloc.start()
    try:
        bounded = _upsampled(kept, shape, 2 * pixels, "classical")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(bounded) == 100 and peak < 12 * pixels, f"peak {peak / pixels:.1f} bytes per pixel"
    assert ClassicalProposals.mask_pixels > 0
    reference = Proposals.from_masks(_upsample(kept.decode(), (200, 250)), kept.scores, "classical")
    chunked = _upsampled(kept, (200, 250), 3 * 200 * 250, "classical")
    assert [r["counts"] for r in reference.rles] == [r["counts"] for r in chunked.rles]
    assert np.array_equal(reference.scores, chunked.scores)


def test_one_helper_sizes_every_mask_chunk(monkeypatch):
    """masks_per_chunk (beside DEFAULT_MASK_PIXELS) is the one formula: classical upsampling,
    MaskFormer/SAM and matching all call it."""
    import inspect

    from dataengine import config, match
    from dataengine.proposals import classical, hf

    assert config.masks_per_chunk(100, 10, 5) == 2 and config.masks_per_chunk(99, 10, 10) == 1
    assert config.masks_per_chunk(1, 0, 0) == 1 and config.masks_per_chunk(1 << 26, 2048, 2048) == 16
    for module in (match, classical, hf):
        assert module.masks_per_chunk is config.masks_per_chunk
        assert "mask_pixels //" not in inspect.getsource(module)
    calls = []
    monkeypatch.setattr(classical, "masks_per_chunk", lambda *args: calls.append(args) or 1)
    kept = Proposals.from_masks(np.ones((3, 4, 5), dtype=bool), np.ones(3), "classical")
    assert len(classical._upsampled(kept, (8, 10), 10**9, "classical")) == 3 and calls == [(10**9, 8, 10)]


def test_classical_proposals_are_the_same_with_a_tiny_mask_budget():
    from dataengine.proposals.classical import ClassicalProposals

    sample = Sample("big", "1", "here", [])
    sample.image = many_regions(300, 400)
    narrow = ClassicalProposals(ProposalConfig())
    narrow.mask_pixels = 1
    a, b = ClassicalProposals(ProposalConfig()).generate(sample), narrow.generate(sample)
    assert len(a) > 5 and [r["counts"] for r in a.rles] == [r["counts"] for r in b.rles]
    assert np.array_equal(a.scores, b.scores)


def test_matching_gives_the_same_pairs_with_a_tiny_mask_budget(tiny_clip):
    from dataengine.config import MatchConfig
    from dataengine.match import RegionMatcher
    from dataengine.records import NounMention

    image = many_regions(90, 120)
    masks = np.zeros((6, 90, 120), dtype=bool)
    for number in range(6):
        masks[number, number * 10 : number * 10 + 30, number * 12 : number * 12 + 40] = True

    def sample():
        made = Sample("k", "1", "here", [Caption("0", "a dog and a cat")])
        made.image, made.height, made.width = image, 90, 120
        made.proposals = Proposals.from_masks(masks, np.linspace(1, 0.5, 6), "classical")
        made.nouns = [NounMention("dog", "0", 2, 5), NounMention("cat", "0", 12, 15)]
        return made

    wide, narrow = sample(), sample()
    RegionMatcher(tiny_clip, MatchConfig()).match([wide])
    RegionMatcher(tiny_clip, MatchConfig(), mask_pixels=1).match([narrow])  # one mask at a time
    assert [(p.proposal_index, p.score) for p in wide.pairs] == [(p.proposal_index, p.score) for p in narrow.pairs]
    assert all(np.array_equal(a.crop, b.crop) and np.array_equal(a.crop_mask, b.crop_mask)
               for a, b in zip(wide.pairs, narrow.pairs, strict=True))


def test_maskformer_proposals_are_the_same_with_a_tiny_mask_budget(maskformer_dir):
    from dataengine.proposals import create_generator

    config = ProposalConfig(generator=f"hf:{maskformer_dir}")
    sample = Sample("k", "1", "here", [])
    sample.image = many_regions(70, 90)
    wide = create_generator(config.generator, config)
    narrow = create_generator(config.generator, config)
    narrow.mask_pixels = 1
    a, b = wide.generate(sample), narrow.generate(sample)
    assert [r["counts"] for r in a.rles] == [r["counts"] for r in b.rles]
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.class_probs, b.class_probs)


# --- a stage leaves torch's thread count as it found it ----------------------------------------------


def test_local_mining_restores_torch_threads(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        mine(folder_job(tmp_path))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
