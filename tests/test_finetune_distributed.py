"""Data-parallel training on CPU with gloo: two processes with half the batch each train what one
process with the whole batch trains, a kill -9 mid-epoch resumes exactly, and Ray Train's workers
equal torchrun's.

The data order that makes runs comparable: every run, whatever its number of processes, walks
the one order of (seed, epoch, --workers); each global batch of --batch-size pairs is dealt to the
ranks in contiguous parts (an uneven last batch too: 5 pairs go 2 + 3). Tolerances, float32 on
CPU: losses within 1e-5 and MPT's prompts within 1e-5 (the sums of the batch are split
differently between two processes, so they differ in the last bits). In full finetune the
towers' features agree within 1e-5, and so do all but a handful of weights: those whose gradient
is zero in exact arithmetic (the attention's key bias, which softmax ignores) or nearly so,
which AdamW's normalisation turns from rounding noise into steps of up to the learning rate.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ddp_run import weights_digest
from pairs import write_pair_shards

from finetune.config import TrainConfig, TrainConfigError
from finetune.distributed import World, check_global_batch
from finetune.train import clip_loss, train

HERE = Path(__file__).resolve().parent
ATOL = 1e-5
# 45 pairs in 3 shards of 15, dealt to 2 loader workers: 30 and 15 pairs, batches of 10, 10, 10 and 10, 5
# (the last one splits 2 + 3 over the two processes); 5 optimizer steps an epoch
SETTINGS = {"mpt": dict(mode="mpt", loss="clip+vocab", checkpoint_every=3),
            "ft": dict(mode="ft", ft_lr=1e-3, accumulate=2)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_pair_shards(tmp_path_factory.mktemp("pairs") / "shards", pairs=45, per_shard=15)


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
        torchrun(settings(shards, folder / mode, mode), env={"DDP_TEST_DIGESTS": "1"})
    return folder


# ---------------------------------------------------------------- the pieces


def test_global_batch_is_dealt_in_contiguous_parts_and_must_divide():
    assert [World(rank, 2).share(10) for rank in range(2)] == [slice(0, 5), slice(5, 10)]
    assert [World(rank, 2).share(5) for rank in range(2)] == [slice(0, 2), slice(2, 5)]
    assert [World(rank, 3).share(2) for rank in range(3)] == [slice(0, 0), slice(0, 1), slice(1, 2)]
    assert World().share(7) == slice(0, 7)
    with pytest.raises(TrainConfigError, match="--batch-size 10 is the global batch.*3 processes"):
        check_global_batch(10, 3, "processes")
    check_global_batch(12, 3, "processes")


def test_ray_workers_that_do_not_divide_the_batch_are_refused_before_ray_starts(shards, tmp_path, capsys):
    from dataengine.cli import main

    values = settings(shards, tmp_path / "run", "mpt")
    assert main(["finetune", *flags(values), "--ray-workers", "3"]) == 2
    assert "must divide evenly over the 3 Ray workers" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


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
            share = world.share(size)
            mine = regions[share].clone().requires_grad_()
            counts = [len(range(size)[World(r, 2).share(size)]) for r in range(2)]
            gathered, all_labels = world.gather(mine, labels[share], counts)
            loss = clip_loss(gathered, vocabulary[all_labels], all_labels, scale)
            loss.backward()
            assert torch.equal(all_labels, labels) and torch.allclose(loss, expected, atol=1e-6)
            # every rank holds the same loss, so the gather's backward sums world-size copies of each
            # rank's gradient: DDP's average over the ranks brings it back to the whole batch's
            assert torch.allclose(mine.grad, 2 * whole.grad[share], atol=1e-6)
        # without repeated nouns the loss is open_clip's, gathered with gradients as open_clip's trainer does
        regions = F.normalize(torch.randn(4, 8, generator=generator), dim=-1)[world.share(4)]
        labels = torch.arange(4)[world.share(4)]
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
    train(TrainConfig(**settings(shards, one, mode)))
    two = two_process_runs / mode
    assert len(losses(two)) == (10 if mode == "mpt" else 6)  # 5 batches an epoch, 2 per step in ft
    assert losses(two) == pytest.approx(losses(one), abs=ATOL)
    assert_same_weights(trained(one, mode), trained(two, mode), mode)
    digests = {(two / f"weights-rank{rank}.txt").read_text() for rank in range(2)}
    assert len(digests) == 1  # every rank ends with the same CLIP
    if mode == "mpt":  # ... and in MPT it is the frozen CLIP, bit for bit
        from dataengine.clip import load_clip

        assert digests == {weights_digest(load_clip("dataengine-tiny", "cpu", seed=0).model)}


def test_kill_minus_nine_mid_epoch_then_resume_equals_the_uninterrupted_run(shards, two_process_runs, tmp_path):
    out = tmp_path / "killed"
    values = settings(shards, out, "mpt")  # checkpoints at steps 3, 6 and 9 (5 steps an epoch)
    run = torchrun(values, env={"DDP_TEST_PAUSE_AT": "4"}, wait=False)
    try:
        deadline = time.monotonic() + 240
        while not (out / "paused.txt").exists():
            assert run.poll() is None, run.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the run never reached step 4"
            time.sleep(0.2)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # torchrun and both ranks, mid-epoch: step 4 logged, last checkpoint step 3
        run.wait()
        run.stderr.close()
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert (saved["global_step"], saved["epoch"]) == (3, 0) and len(losses(out)) == 4
    torchrun(values, "--resume")
    uninterrupted = two_process_runs / "mpt"
    assert losses(out) == losses(uninterrupted)
    assert torch.equal(trained(out, "mpt")["prompts"], trained(uninterrupted, "mpt")["prompts"])


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
