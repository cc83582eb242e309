"""`dataengine finetune --ray-workers N`: the same training run as N Ray Train workers.

A `ray.train.torch.TorchTrainer` starts the workers and their process group (gloo on CPU, NCCL
with --ray-gpu); each worker runs `finetune.train.train`, the one train loop, as one rank of a
data-parallel run (finetune.distributed), reading its own data ranks' shards (one data rank per
worker unless --data-ranks says otherwise), so that the run equals torchrun's with as many
processes. --shards and --out must be on storage every worker reads (and OUT writable by rank 0's
node). Every checkpoint the trainer writes in OUT/checkpoints is also reported to Ray
(`ray.train.report`), so that a worker group Ray restarts after a failure resumes from it.
"""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig
from .train import train


def train_loop(settings: dict) -> None:
    """A Ray Train worker's loop: one rank of the run, on the device Ray gave it."""
    import ray.train
    import ray.train.torch

    from dataengine.config import from_dict

    config = from_dict(TrainConfig, {**settings["config"], "device": str(ray.train.torch.get_device())})
    # a worker group Ray restarted after a failure resumes the run it was training
    restarted = ray.train.get_checkpoint() is not None and (Path(config.out) / "checkpoints" / "last.pt").exists()
    resume = settings["resume"] or restarted
    train(config, resume, reporter=report)


def report(metrics: dict, folder: Path | None) -> None:
    """Every worker reports; rank 0 with the checkpoint folder it wrote."""
    import ray.train

    checkpoint = None if folder is None else ray.train.Checkpoint.from_directory(str(folder))
    ray.train.report(metrics, checkpoint=checkpoint)


def fit(config: TrainConfig, resume: bool, workers: int, use_gpu: bool, storage: str | None, max_failures: int = 0):
    """Runs the training on the Ray cluster this process is connected to (ray.init, or the one of
    `ray job submit`); returns Ray's Result."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    run = RunConfig(name=f"finetune-{Path(config.out).name}", storage_path=storage,
                    checkpoint_config=CheckpointConfig(num_to_keep=1),
                    failure_config=FailureConfig(max_failures=max_failures))
    trainer = TorchTrainer(train_loop, train_loop_config={"config": config.to_dict(), "resume": resume},
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu), run_config=run)
    return trainer.fit()
