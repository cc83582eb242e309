"""Data-parallel training on CPU with gloo: two processes with half the batch each train what one
process with the whole batch and --data-ranks 2 trains, each rank reads only its own shards, a
kill -9 mid-epoch resumes exactly (on 2 processes, and within float tolerance on 1), and Ray
Train's workers equal torchrun's.

The data order that makes runs comparable is a function of (seed, epoch, --data-ranks, --workers):
per epoch the shards are shuffled and dealt to the 2 data ranks, each rank's to its 2 loader
workers; global batch t is data rank 0's local batch t (of --batch-size / 2 pairs) then data rank
1's. One process with --data-ranks 2 reads both ranks' shards into the same local batches, so it
sees the very global batches two processes see. Tolerances, float32 on CPU: losses within 1e-5
and MPT's prompts within 1e-5 (the sums of the batch are split differently between two processes,
so they differ in the last bits); a 2-process run and its kill -9 + --resume on 2 processes, and
Ray Train's 2 workers against torchrun's 2 processes, agree bit for bit. In full finetune the
towers' features agree within 1e-5, and so do all but a handful of weights: those whose gradient
is zero in exact arithmetic (the attention's key bias, which softmax ignores) or nearly so,
which AdamW's normalisation turns from rounding noise into steps of up to the learning rate.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ddp_run import weights_digest
from pairs import write_pair_shards

from finetune.config import TrainConfig, TrainConfigError
from finetune.distributed import World, check_data_ranks
from finetune.shards import Corpus, PairStream, ShardError, batches_in_epoch, deal_shards, shard_pairs
from finetune.train import Trainer, clip_loss, train

HERE = Path(__file__).resolve().parent
ATOL = 1e-5
# 45 pairs in 5 shards of 9, dealt 3 + 2 to the data ranks and then to their 2 loader workers: 18 + 9 pairs
# (4 + 2 local batches of 5) and 9 + 9 (2 + 2), so data rank 1's shards run out 2 steps before rank 0's,
# which then makes the global batches alone; 6 batches an epoch
SETTINGS = {"mpt": dict(mode="mpt", loss="clip+vocab", checkpoint_every=5),
            "ft": dict(mode="ft", ft_lr=1e-3, accumulate=2)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_pair_shards(tmp_path_factory.mktemp("pairs") / "shards", pairs=45, per_shard=9)


def settings(shards, out, mode) -> dict:
    return dict(shards=shards, out=str(out), clip="dataengine-tiny", epochs=2, batch_size=10, workers=2,
                prompt_depth=2, log_every=1, progress=False, shuffle_buffer=16, **SETTINGS[mode])


def flags(values: dict) -> list[str]:
    words = []
    for name, value in values.items():
        if name == "progress":
            words.append("--no-progress")
        else:
            words += [f"--{name.replace('_', '-')}", str(value)]
    return words


def torchrun(values: dict, *extra: str, env: dict | None = None, wait: bool = True):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(HERE / "ddp_run.py"), *flags(values), *extra]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(command, env=environment, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def trained(out: Path, mode: str) -> dict:
    if mode == "mpt":
        return {"prompts": torch.load(out / "prompts.pt", weights_only=True)["prompts"]}
    return torch.load(out / "model.pt", weights_only=True)


def assert_same_weights(a: dict, b: dict, mode: str) -> None:
    """MPT: every prompt within ATOL. FT: the towers give the same features within ATOL, and all but
    a few weights (under 0.1%) are within ATOL (see the module docstring), none further than the
    learning rate times the steps."""
    if mode == "mpt":
        assert torch.allclose(a["prompts"], b["prompts"], atol=ATOL, rtol=0), (a["prompts"] - b["prompts"]).abs().max()
        return
    differences = torch.cat([(a[name] - b[name]).abs().flatten() for name in a])
    assert (differences > ATOL).float().mean() < 1e-3 and differences.max() <= SETTINGS["ft"]["ft_lr"] * 6
    assert torch.allclose(encode(a), encode(b), atol=ATOL, rtol=0)


def encode(state: dict) -> torch.Tensor:
    from dataengine.clip import load_clip

    clip = load_clip("dataengine-tiny", "cpu", seed=0)
    clip.model.load_state_dict(state)
    images = torch.randn(4, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return F.normalize(clip.model.encode_image(images), dim=-1)


@pytest.fixture(scope="module")
def two_process_runs(shards, tmp_path_factory):
    """The uninterrupted two-process run of each mode, made once."""
    folder = tmp_path_factory.mktemp("torchrun")
    for mode in SETTINGS:
        torchrun(settings(shards, folder / mode, mode), env={"DDP_TEST_DIGESTS": "1",
                                                            "DDP_TEST_OPENED": str(folder / f"{mode}-opened")})
    return folder


# ---------------------------------------------------------------- the pieces


def test_shards_are_dealt_to_data_ranks_balanced_by_pairs_then_to_workers():
    shards = [f"s{i}" for i in range(7)]
    for epoch in range(3):
        single = deal_shards(shards, 0, epoch, 2)
        order = [*single[0][0], *single[0][1]]
        assert len(single) == 1 and sorted(order) == shards  # one data rank: every shard, one shuffled order
        dealt = deal_shards(shards, 0, epoch, 2, ranks=3)
        mine = [{shard for worker in rank for shard in worker} for rank in dealt]
        assert set.union(*mine) == set(shards) and sum(map(len, mine)) == 7  # each shard to one rank
        assert sorted(map(len, mine)) == [2, 2, 3]  # equal shards: round-robin
    assert deal_shards(shards, 0, 0, 2, ranks=3) != deal_shards(shards, 0, 1, 2, ranks=3)  # reshuffled per epoch
    # unequal shards: each goes to the rank with the fewest pairs so far
    counts = [100, 10, 10, 10, 10, 10, 10]
    dealt = deal_shards(list(range(7)), 0, 0, 1, ranks=2, counts=counts)
    assert sorted(sum(counts[i] for i in rank[0]) for rank in dealt) == [60, 100]
    assert batches_in_epoch(counts, 0, 0, 1, 10, ranks=2) == 10  # the rank with the 100 pairs


def test_data_ranks_must_divide_the_batch_and_be_a_multiple_of_the_processes(shards, tmp_path):
    with pytest.raises(TrainConfigError, match="--batch-size 10 is the global batch.*3 data ranks"):
        check_data_ranks(10, 3, 1, "processes")
    with pytest.raises(TrainConfigError, match="--data-ranks 3 must be a multiple of the 2 processes"):
        check_data_ranks(12, 3, 2, "processes")
    check_data_ranks(12, 4, 2, "processes")
    with pytest.raises(ShardError, match="5 shard\\(s\\) for 6 data ranks"):
        Trainer(TrainConfig(**{**settings(shards, tmp_path / "run", "mpt"), "batch_size": 12, "data_ranks": 6}))


def test_one_data_rank_of_two_reads_its_own_shards_and_they_add_up_to_the_corpus(shards):
    corpus = Corpus.scan(shards)
    keys = []
    for rank in range(2):
        stream = PairStream(corpus.shards, corpus.vocabulary, 64, (0.5,) * 3, (0.25,) * 3, 5, epoch=1, rank=rank,
                            ranks=2, counts=corpus.counts)
        mine = {url for worker in deal_shards(corpus.shards, 0, 1, 2, 2, corpus.counts)[rank] for url in worker}
        batches = list(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2))
        assert {key for batch in batches for key in batch["keys"]} == {key for url in mine for key, _ in shard_pairs(url)}
        assert len(batches) == (6, 4)[rank] and max(len(batch["keys"]) for batch in batches) == 5
        keys += [key for batch in batches for key in batch["keys"]]
    assert sorted(keys) == sorted(key for url in corpus.shards for key, _ in shard_pairs(url))


def test_ray_workers_that_do_not_divide_the_batch_are_refused_before_ray_starts(shards, tmp_path, capsys):
    from dataengine.cli import main

    values = settings(shards, tmp_path / "run", "mpt")
    assert main(["finetune", *flags(values), "--ray-workers", "3"]) == 2
    assert "must divide evenly over the 3 data ranks" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def half(size: int, rank: int) -> slice:
    """Rank 0 of 2 gets the first size // 2 rows, rank 1 the rest."""
    return slice(0, size // 2) if rank == 0 else slice(size // 2, size)


def _gather_worker(rank: int, port: int) -> None:
    """One of two gloo processes: the gathered loss is the whole batch's, and equals open_clip's ClipLoss."""
    import torch.distributed as dist
    from open_clip.loss import ClipLoss

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        world = World(rank, 2)
        generator = torch.Generator().manual_seed(0)
        vocabulary = F.normalize(torch.randn(4, 8, generator=generator), dim=-1)
        scale = torch.tensor(10.0)
        for size, labels in ((6, torch.arange(6) % 4), (5, torch.arange(5) % 4)):  # nouns repeat; 5 splits 2 + 3
            regions = F.normalize(torch.randn(size, 8, generator=generator), dim=-1)
            whole = regions.clone().requires_grad_()
            expected = clip_loss(whole, vocabulary[labels], labels, scale)
            expected.backward()
            share = half(size, rank)
            mine = regions[share].clone().requires_grad_()
            counts = [len(range(size)[half(size, r)]) for r in range(2)]
            gathered, all_labels = world.gather(mine, labels[share], counts)
            loss = clip_loss(gathered, vocabulary[all_labels], all_labels, scale)
            loss.backward()
            assert torch.equal(all_labels, labels) and torch.allclose(loss, expected, atol=1e-6)
            # every rank holds the same loss, so the gather's backward sums world-size copies of each
            # rank's gradient: DDP's average over the ranks brings it back to the whole batch's
            assert torch.allclose(mine.grad, 2 * whole.grad[share], atol=1e-6)
        # without repeated nouns the loss is open_clip's, gathered with gradients as open_clip's trainer does
        regions = F.normalize(torch.randn(4, 8, generator=generator), dim=-1)[half(4, rank)]
        labels = torch.arange(4)[half(4, rank)]
        gathered, all_labels = world.gather(regions.clone().requires_grad_(), labels, [2, 2])
        ours = clip_loss(gathered, vocabulary[all_labels], all_labels, scale, mask_repeated=False)
        theirs = ClipLoss(gather_with_grad=True, rank=rank, world_size=2)(regions, vocabulary[labels], scale)
        assert torch.allclose(ours, theirs, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_gathered_loss_and_gradients_are_the_whole_batchs():
    from test_ray_job_submit import free_port

    torch.multiprocessing.spawn(_gather_worker, args=(free_port(),), nprocs=2)


# ---------------------------------------------------------------- whole runs


@pytest.mark.parametrize("mode", list(SETTINGS))
def test_two_processes_with_half_the_batch_train_what_one_process_does(shards, two_process_runs, tmp_path, mode):
    one = tmp_path / "one"
    train(TrainConfig(**settings(shards, one, mode), data_ranks=2))
    two = two_process_runs / mode
    assert len(losses(two)) == (12 if mode == "mpt" else 6)  # 6 batches an epoch, 2 per step in ft
    assert losses(two) == pytest.approx(losses(one), abs=ATOL)
    assert_same_weights(trained(one, mode), trained(two, mode), mode)
    digests = {(two / f"weights-rank{rank}.txt").read_text() for rank in range(2)}
    assert len(digests) == 1  # every rank ends with the same CLIP
    if mode == "mpt":  # ... and in MPT it is the frozen CLIP, bit for bit
        from dataengine.clip import load_clip

        assert digests == {weights_digest(load_clip("dataengine-tiny", "cpu", seed=0).model)}


def test_each_rank_opens_only_its_own_shards(shards, two_process_runs):
    corpus = Corpus.scan(shards)
    for epoch in range(2):
        dealt = deal_shards(corpus.shards, 0, epoch, 2, 2, corpus.counts)
        opened = [opened_shards(two_process_runs / "mpt-opened", rank, epoch) for rank in range(2)]
        assert opened == [sorted(url for worker in rank for url in worker) for rank in dealt]
        assert len(opened[0]) + len(opened[1]) == 5  # each shard read once an epoch, by one rank


def opened_shards(folder: Path, rank: int, epoch: int) -> list[str]:
    lines = (folder / f"rank{rank}.txt").read_text().splitlines()
    return sorted(url for line in lines for read_epoch, url in [line.split(" ", 1)] if int(read_epoch) == epoch)


def test_kill_minus_nine_mid_epoch_then_resume_equals_the_uninterrupted_run(shards, two_process_runs, tmp_path):
    out = tmp_path / "killed"
    values = settings(shards, out, "mpt")  # checkpoints at steps 5 and 10 (6 steps an epoch)
    run = torchrun(values, env={"DDP_TEST_PAUSE_AT": "7"}, wait=False)
    try:
        deadline = time.monotonic() + 240
        while not (out / "paused.txt").exists():
            assert run.poll() is None, run.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the run never reached step 7"
            time.sleep(0.2)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # torchrun and both ranks, mid-epoch 1: step 7 logged, last checkpoint step 5
        run.wait()
        run.stderr.close()
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    # mid-epoch 0: data rank 1's shards have run out (both its workers gave their 9 pairs), rank 0's have not
    assert (saved["global_step"], saved["epoch"]) == (5, 0) and len(losses(out)) == 7
    assert saved["consumed"][1] == {0: 9, 1: 9} and saved["consumed"][0] == {0: 15, 1: 9}
    assert saved["config"]["data_ranks"] == 2
    shutil.copytree(out, tmp_path / "copy")
    torchrun(values, "--resume")
    uninterrupted = two_process_runs / "mpt"
    assert losses(out) == losses(uninterrupted)
    assert torch.equal(trained(out, "mpt")["prompts"], trained(uninterrupted, "mpt")["prompts"])
    # the same checkpoint (in the same folder: --out is a setting) resumed on one process keeps its 2 data
    # ranks: the same run, within float rounding
    out.rename(tmp_path / "resumed-on-two")
    (tmp_path / "copy").rename(out)
    train(TrainConfig(**values), resume=True)
    assert losses(out) == pytest.approx(losses(uninterrupted), abs=ATOL)
    assert_same_weights(trained(out, "mpt"), trained(uninterrupted, "mpt"), "mpt")


def test_ray_train_workers_train_what_torchrun_does(shards, two_process_runs, tmp_path):
    import ray

    from finetune.ray_train import fit

    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir)
    try:
        config = TrainConfig(**settings(shards, tmp_path / "ray", "mpt"))
        result = fit(config, resume=False, workers=2, use_gpu=False, storage=str(tmp_path / "ray-storage"))
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert result.error is None
    assert result.checkpoint is not None and "last.pt" in os.listdir(result.checkpoint.path)
    torchrun_out = two_process_runs / "mpt"
    assert losses(tmp_path / "ray") == losses(torchrun_out)
    assert torch.equal(trained(tmp_path / "ray", "mpt")["prompts"], trained(torchrun_out, "mpt")["prompts"])


def test_a_rank_whose_regions_mask_no_patch_out_still_steps_with_the_others(tmp_path):
    """MPT's prompts replace the patches outside a region: a rank whose whole local batch is regions
    that fill their crops leaves the prompts out of its forward, and must still take part in DDP's
    gradient reduction (a rank that reduces nothing leaves the others waiting for ever)."""
    import numpy as np
    import webdataset as wds

    from dataengine.write import encode_mask_png

    folder = tmp_path / "shards"
    write_pair_shards(folder, pairs=8, per_shard=8)  # pairs-000000.tar: shapes on a background
    full = encode_mask_png(np.ones((224, 224), dtype=bool))
    with tarfile.open(folder / "pairs-000000.tar") as reader:
        images = {m.name.split(".")[0]: reader.extractfile(m).read() for m in reader if m.name.endswith(".jpg")}
    with wds.TarWriter(str(folder / "pairs-000001.tar")) as sink:  # the same images, each region its whole crop
        for index, (_, jpg) in enumerate(sorted(images.items())):
            sink.write({"__key__": f"full{index:05d}_n0000", "jpg": jpg, "txt": "square", "mask.png": full})
    values = dict(shards=str(folder / "pairs-{000000..000001}.tar"), out=str(tmp_path / "run"),
                  clip="dataengine-tiny", epochs=2, batch_size=4, workers=0, prompt_depth=2, log_every=1,
                  progress=False, mode="mpt", checkpoint_every=100)
    torchrun(values)  # one shard per data rank: one of the two ranks never uses the prompts
    logged = losses(tmp_path / "run")
    assert len(logged) == 8 and all(math.isfinite(loss) for loss in logged)  # 16 pairs, 4 a step, 2 epochs
