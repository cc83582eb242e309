"""The Ray Data executor: the same stages as a streaming dataset, from one laptop to a cluster.

    shards (one row each) -> read + CPU stages (tasks: nouns, decode, classical/annotation proposals)
                          -> model stages (actor pool: learned proposals, CLIP matching)
                          -> the driver, which writes each shard once all of its samples are back

Samples travel between operators pickled in a binary column. Region crops are prepared inside
the matching actor, next to the model: shipping them from CPU tasks would move about 15 MB per
image (100 crops of 224x224x3) through the object store instead of the ~1 MB decoded image.
Shard ids come from `plan_shards`, never from scheduling, so output names and keys are the same
for any number of workers and equal to the local executor's. Both operators build the run's one
stage list (`build_stages`) and keep their part of it (`split_by_placement`): CPU stages in the
tasks, model stages in the actors, where models load once. The driver's Source, with its key
index, goes to the object store once; each worker process reads it from there once per run and
never re-reads the captions, instances or tar headers the driver already read.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import socket
import tempfile
import uuid

import numpy as np

from ..config import ConfigError
from ..records import Sample
from ..stage import split_by_placement
from ..stages import build_stages
from . import ShardSpec

log = logging.getLogger(__name__)
_PROCESS_CACHE: dict[str, object] = {}  # per worker process: the run's source and CPU stages, built once
ACTOR_START_SECONDS = 600  # how long Ray Data may wait for the model actors to start before failing
# Small blocks: every yielded batch of samples (decoded images: megabytes) becomes its own block and
# streams on at once, instead of waiting in a task until Ray's default 128 MiB block fills up.
BLOCK_BYTES = 1 << 20


def _cached(kind: str, run_id: str, build):
    """One object per worker process and run; a new run (same worker, next job) starts afresh."""
    if _PROCESS_CACHE.get("run") != run_id:
        _PROCESS_CACHE.clear()
        _PROCESS_CACHE["run"] = run_id
    if kind not in _PROCESS_CACHE:
        _PROCESS_CACHE[kind] = build()
    return _PROCESS_CACHE[kind]


def _pack(samples: list[Sample]) -> dict[str, np.ndarray]:
    column = np.empty(len(samples), dtype=object)
    column[:] = [pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL) for sample in samples]
    return {"shard": np.array([sample.shard for sample in samples], dtype=np.int64), "sample": column}


def _unpack(batch: dict[str, np.ndarray]) -> list[Sample]:
    return [pickle.loads(blob) for blob in batch["sample"]]


def process_shards(batch: dict[str, np.ndarray], config, source_ref, run_id: str):
    """Shard rows -> their samples through the CPU stages, yielded `images_per_batch` at a time so
    that the model actors can start on a shard's first images while its task goes on."""
    import ray

    source = _cached("source", run_id, lambda: ray.get(source_ref))
    stages = _cached("cpu", run_id, lambda: _set_up(split_by_placement(build_stages(config, "cpu"))[0]))
    for shard, start, stop in zip(batch["shard"], batch["start"], batch["stop"], strict=True):
        samples = source.read(int(start), int(stop))
        for first in range(0, len(samples), config.images_per_batch):
            chunk = samples[first : first + config.images_per_batch]
            for sample in chunk:
                sample.shard = int(shard)
            yield _pack(_apply(stages, chunk))


class ModelStages:
    """An actor of the model pool: loads its models once, then runs them on batch after batch."""

    def __init__(self, config, device: str):
        from ..clip import resolve_device

        self.stages = _set_up(split_by_placement(build_stages(config, resolve_device(device)))[1])

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


class _HideProgressBarNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Progress bars disabled" not in record.getMessage()


class RayExecutor:
    name = "ray"

    def __init__(self, config):
        self.config = config
        self.device = config.device  # resolved by setup() against the cluster's resources
        self.run_id = uuid.uuid4().hex
        self.started_ray = False
        self.temp_dir = None
        self.actor_cpus = self.actor_gpus = 0.0

    def setup(self) -> None:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        settings = self.config.ray
        if not ray.is_initialized():
            common = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": False}
            try:
                if settings.address:
                    check_reachable(settings.address, settings.connect_timeout_s)
                    ray.init(address=settings.address, **common)
                else:
                    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # our own embedded instance: no token prompt
                    self.temp_dir = None if settings.temp_dir else tempfile.mkdtemp(prefix="dataengine-ray-")
                    # address="local": a new embedded instance even where RAY_ADDRESS names a cluster
                    ray.init(address="local", num_cpus=settings.num_cpus, num_gpus=settings.num_gpus,
                             include_dashboard=False, _temp_dir=settings.temp_dir or self.temp_dir,
                             object_store_memory=settings.object_store_memory, **common)
            except ConnectionError as error:  # "auto" with no cluster running, a refused handshake
                raise ConfigError(f"--ray-address {settings.address}: {str(error).splitlines()[0]}") from None
            except OSError as error:
                if "AF_UNIX path length" not in str(error):
                    raise
                raise ConfigError("--ray-temp-dir: Ray's socket paths under it exceed 107 bytes; "
                                  "choose a shorter folder") from None
            self.started_ray = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bar counts images, pairs and shards
        context.target_max_block_size = BLOCK_BYTES
        context.print_on_execution_start = False
        if hasattr(context, "wait_for_min_actors_s"):
            context.wait_for_min_actors_s = ACTOR_START_SECONDS  # instead of waiting forever for resources
        logging.getLogger("ray.data").addFilter(_HideProgressBarNote())
        self._place_models(ray.cluster_resources())

    def _place_models(self, resources: dict) -> None:
        """Resolve the device and the model actors' resources here, once, against the cluster: the
        device is part of the job (CPU and GPU scores differ in their last digits), and a request the
        cluster cannot meet is an error now rather than an actor pool that never starts."""
        settings, requested = self.config.ray, self.config.device
        gpus = resources.get("GPU", 0)
        if requested.startswith("cuda") and not gpus:
            raise ConfigError(f"--device {requested}: the Ray cluster has no GPU")
        use_gpu = requested.startswith("cuda") or (requested == "auto" and gpus > 0 and settings.actor_gpus != 0)
        self.actor_gpus = settings.actor_gpus if settings.actor_gpus is not None else (1.0 if use_gpu else 0.0)
        self.actor_cpus = settings.actor_cpus if settings.actor_cpus is not None else (1.0 if use_gpu else 0.0)
        if self.actor_gpus > gpus:
            raise ConfigError(f"--actor-gpus {self.actor_gpus:g}: the Ray cluster has {gpus:g} GPU(s)")
        if self.actor_cpus > resources.get("CPU", 0):
            raise ConfigError(f"ray.actor_cpus {self.actor_cpus:g}: the Ray cluster has {resources.get('CPU', 0):g} CPU(s)")
        self.device = "cuda" if self.actor_gpus > 0 else "cpu"  # an actor sees only its own GPU(s)
        log.info("Ray: %g CPU, %g GPU; %d model actor(s) with %g CPU and %g GPU each, on %s",
                 resources.get("CPU", 0), gpus, settings.model_actors, self.actor_cpus, self.actor_gpus, self.device)

    def dataset(self, source_ref, shards: list[ShardSpec]):
        import warnings

        from ray.util.annotations import RayDeprecationWarning

        rows = [{"shard": spec.shard, "start": spec.start, "stop": spec.stop} for spec in shards]
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing retry limits as remote args but offers no named parameter
            # for them yet; Ray Data's own default for actors is unbounded restarts.
            warnings.simplefilter("ignore", RayDeprecationWarning)
            return self._build(source_ref, rows)

    def _build(self, source_ref, rows):
        import ray

        settings = self.config.ray
        return (
            ray.data.from_items(rows, override_num_blocks=len(rows))
            .map_batches(process_shards, batch_size=1,  # one task per shard: shards are the unit of parallelism
                         fn_kwargs={"config": self.config, "source_ref": source_ref, "run_id": self.run_id},
                         num_cpus=settings.task_cpus, max_retries=settings.max_retries)
            .map_batches(ModelStages, batch_size=self.config.images_per_batch,
                         fn_constructor_kwargs={"config": self.config, "device": self.device},
                         compute=ray.data.ActorPoolStrategy(size=settings.model_actors),
                         num_cpus=self.actor_cpus, num_gpus=self.actor_gpus,
                         max_restarts=settings.max_retries, max_task_retries=settings.max_retries)
        )

    def run(self, source, shards: list[ShardSpec], writer, progress) -> None:
        """Streams the shards through Ray and writes each one as soon as it is complete. Losing an
        actor or a node can surface here despite Ray's own retries (an actor task caught mid-stream
        on a dead node is not retried by Ray Data): the unfinished shards then go round again, a
        bounded number of times, keeping the samples already received."""
        if not shards:
            return
        import ray

        source_ref = ray.put(source.with_key_index())
        spec_of = {spec.shard: spec for spec in shards}
        pending: dict[int, dict[int, Sample]] = {spec.shard: {} for spec in shards}
        for attempt in range(self.config.ray.max_retries + 1):
            try:
                self._stream(source_ref, spec_of, pending, writer, progress)
                break
            except _system_errors() as error:
                if attempt == self.config.ray.max_retries:
                    raise
                log.warning("Ray lost a worker (%s); redoing the %d unfinished shards", type(error).__name__,
                            len(pending))
        if pending:
            missing = {shard: spec_of[shard].size - len(samples) for shard, samples in pending.items()}
            raise RuntimeError(f"Ray returned incomplete shards (shard: samples missing): {missing}; the finished "
                               "shards are kept, rerun the same command to redo the others")

    def _stream(self, source_ref, spec_of: dict[int, ShardSpec], pending: dict, writer, progress) -> None:
        for batch in self.dataset(source_ref, [spec_of[shard] for shard in pending]).iter_batches(batch_size=None,
                                                                                       batch_format="numpy"):
            samples = [sample for sample in _unpack(batch)
                       if sample.shard in pending and sample.index not in pending[sample.shard]]  # repeats: no-ops
            progress.images(samples)
            for sample in samples:
                pending[sample.shard][sample.index] = sample
                if len(pending[sample.shard]) == spec_of[sample.shard].size:
                    done = pending.pop(sample.shard)
                    writer.write_shard(sample.shard, [done[index] for index in sorted(done)])
                    progress.shard_done()

    def close(self) -> None:
        import ray

        if self.started_ray:
            ray.shutdown()
            self.started_ray = False
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


def check_reachable(address: str, timeout: float) -> None:
    """Fail within `timeout` seconds, with a message, where nothing listens at a cluster address:
    ray.init would otherwise retry for many minutes (`ray.connect_timeout_s`). As ray.init does,
    RAY_ADDRESS counts only for "auto": an explicit HOST:PORT is the address it connects to."""
    target = (os.environ.get("RAY_ADDRESS") or address) if address == "auto" else address
    if target == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address(target) or target  # the cluster `ray start` recorded
        except ConnectionError as error:
            raise ConfigError(f"--ray-address {address}: {str(error).splitlines()[0]}") from None
        except Exception:  # Ray's own lookup changed: leave it to ray.init
            return
    host, _, port = target.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or type(error).__name__)
        raise ConfigError(f"--ray-address {address}: no Ray cluster reachable at {host}:{port} within "
                          f"{timeout:g} s ({reason}); start it, or check the address "
                          "(the wait is ray.connect_timeout_s)") from None


def _system_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for lost actors, workers, nodes and objects (never a stage's own exception)."""
    from ray import exceptions

    return (exceptions.RayActorError, exceptions.NodeDiedError, exceptions.WorkerCrashedError,
            exceptions.ObjectLostError, exceptions.OwnerDiedError)
