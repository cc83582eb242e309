"""The Ray Data executor: the same stages as a streaming dataset, from one laptop to a cluster.

    shards (one row each) -> read + CPU stages (tasks: nouns, decode, classical/annotation proposals)
                          -> model stages (actor pool: learned proposals, CLIP matching)
                          -> the driver, which writes each shard once all of its samples are back

Samples travel between operators pickled in a binary column. Region crops are prepared inside
the matching actor, next to the model: shipping them from CPU tasks would move about 15 MB per
image (100 crops of 224x224x3) through the object store instead of the ~1 MB decoded image.
Shard ids come from `plan_shards`, never from scheduling, so output names and keys are the same
for any number of workers and equal to the local executor's. Models load once per actor; CPU-stage
tasks keep their stages per worker process.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile

import numpy as np

from ..records import Sample
from ..stages import DecodeStage, MatchStage, NounStage, ProposalStage
from . import ShardSpec

log = logging.getLogger(__name__)
_PROCESS_CACHE: dict[tuple, object] = {}  # per worker process: sources and CPU stages, built once
# Small blocks: every yielded batch of samples (decoded images: megabytes) becomes its own block and
# streams on at once, instead of waiting in a task until Ray's default 128 MiB block fills up.
BLOCK_BYTES = 1 << 20


def _cached(kind: str, config, build):
    key = (kind, repr(config))
    if key not in _PROCESS_CACHE:
        _PROCESS_CACHE[key] = build()
    return _PROCESS_CACHE[key]


def _pack(samples: list[Sample]) -> dict[str, np.ndarray]:
    column = np.empty(len(samples), dtype=object)
    column[:] = [pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL) for sample in samples]
    return {"shard": np.array([sample.shard for sample in samples], dtype=np.int64), "sample": column}


def _unpack(batch: dict[str, np.ndarray]) -> list[Sample]:
    return [pickle.loads(blob) for blob in batch["sample"]]


def process_shards(batch: dict[str, np.ndarray], config, device: str, learned_proposals: bool):
    """Shard rows -> their samples through the CPU stages, yielded `images_per_batch` at a time so
    that the model actors can start on a shard's first images while its task goes on."""
    from ..sources import create_source

    source = _cached("source", config.source, lambda: create_source(config.source))
    stages = _cached("cpu", config, lambda: _set_up(cpu_stages(config, device, learned_proposals)))
    for shard, start, stop in zip(batch["shard"], batch["start"], batch["stop"], strict=True):
        samples = source.read(int(start), int(stop))
        for first in range(0, len(samples), config.images_per_batch):
            chunk = samples[first : first + config.images_per_batch]
            for sample in chunk:
                sample.shard = int(shard)
            yield _pack(_apply(stages, chunk))


def cpu_stages(config, device: str, learned_proposals: bool) -> list:
    stages = [NounStage(config), DecodeStage(config)]
    if not learned_proposals:
        stages.append(ProposalStage(config, device))
    return stages


class ModelStages:
    """An actor of the model pool: loads its models once, then runs them on batch after batch."""

    def __init__(self, config, device: str, learned_proposals: bool):
        from ..clip import resolve_device

        device = resolve_device(device)
        stages = [ProposalStage(config, device)] if learned_proposals else []
        self.stages = _set_up([*stages, MatchStage(config, device)])

    def __call__(self, batch):
        return _pack(_apply(self.stages, _unpack(batch)))


def _set_up(stages: list) -> list:
    for stage in stages:
        stage.setup()
    return stages


def _apply(stages: list, samples: list[Sample]) -> list[Sample]:
    for stage in stages:
        samples = stage(samples)
    return samples


def default_temp_dir() -> str:
    """Short on purpose: Ray's socket paths inside it must stay under 107 bytes."""
    return tempfile.mkdtemp(prefix="dataengine-ray-")


class RayExecutor:
    name = "ray"

    def __init__(self, config, device: str):
        self.config = config
        self.device = device  # resolved in each actor ("auto": the actor's GPU if it has one)
        self.learned_proposals = config.proposals.generator.startswith("hf:")
        self.started_ray = False

    def setup(self) -> None:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if ray.is_initialized():
            return
        settings = self.config.ray
        common = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": False}
        if settings.address:
            ray.init(address=settings.address, **common)
        else:
            ray.init(num_cpus=settings.num_cpus, num_gpus=settings.num_gpus, include_dashboard=False,
                     _temp_dir=settings.temp_dir or default_temp_dir(),
                     object_store_memory=settings.object_store_memory, **common)
        self.started_ray = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bar counts images, pairs and shards
        context.target_max_block_size = BLOCK_BYTES
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # e.g. its note that progress bars are off

    def _actor_resources(self) -> tuple[float, float]:
        import ray

        settings = self.config.ray
        wants_gpu = self.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0
        gpus = settings.actor_gpus if settings.actor_gpus is not None else (1.0 if wants_gpu else 0.0)
        cpus = settings.actor_cpus if settings.actor_cpus is not None else (1.0 if gpus else 0.0)
        return cpus, gpus

    def dataset(self, shards: list[ShardSpec]):
        import warnings

        from ray.util.annotations import RayDeprecationWarning

        settings = self.config.ray
        rows = [{"shard": spec.shard, "start": spec.start, "stop": spec.stop} for spec in shards]
        actor_cpus, actor_gpus = self._actor_resources()
        task_args = {"num_cpus": settings.task_cpus, "max_retries": settings.max_retries}
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing retry limits as remote args but offers no named parameter
            # for them yet; Ray Data's own default for actors is unbounded restarts.
            warnings.simplefilter("ignore", RayDeprecationWarning)
            return self._build(rows, task_args, actor_cpus, actor_gpus)

    def _build(self, rows, task_args, actor_cpus, actor_gpus):
        import ray

        settings = self.config.ray
        return (
            ray.data.from_items(rows, override_num_blocks=len(rows))
            .map_batches(process_shards, batch_size=1,  # one task per shard: shards are the unit of parallelism
                         fn_kwargs={"config": self.config, "device": "cpu",
                                    "learned_proposals": self.learned_proposals}, **task_args)
            .map_batches(ModelStages, batch_size=self.config.images_per_batch,
                         fn_constructor_kwargs={"config": self.config, "device": self.device,
                                                "learned_proposals": self.learned_proposals},
                         compute=ray.data.ActorPoolStrategy(size=settings.model_actors),
                         num_cpus=actor_cpus, num_gpus=actor_gpus,
                         max_restarts=settings.max_retries, max_task_retries=settings.max_retries)
        )

    def run(self, source, shards: list[ShardSpec], writer, progress) -> None:
        if not shards:
            return
        spec_of = {spec.shard: spec for spec in shards}
        pending: dict[int, dict[int, Sample]] = {spec.shard: {} for spec in shards}
        for batch in self.dataset(shards).iter_batches(batch_size=None, batch_format="numpy"):
            samples = _unpack(batch)
            progress.images(samples)
            for sample in samples:
                pending[sample.shard][sample.index] = sample  # keyed: a retried batch cannot duplicate
                if len(pending[sample.shard]) == spec_of[sample.shard].size:
                    done = pending.pop(sample.shard)
                    writer.write_shard(sample.shard, [done[index] for index in sorted(done)])
                    progress.shard_done()
        if pending:
            missing = {shard: spec_of[shard].size - len(samples) for shard, samples in pending.items()}
            raise RuntimeError(f"Ray returned incomplete shards (shard: samples missing): {missing}; "
                               "rerun the same command to redo them")

    def close(self) -> None:
        import ray

        if self.started_ray:
            ray.shutdown()
            self.started_ray = False
