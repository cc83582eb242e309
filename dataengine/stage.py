"""The base of every stage: batching, timing, counters and error capture (datatrove's PipelineStep).

A concrete stage writes `process(sample)` (per sample) or `process_batch(samples)` (batched models).
It rejects a sample with `sample.drop(reason, detail)`; an exception is caught here and becomes a
reject row `stage_error` carrying the exception class and message, so one bad sample never takes
down its batch. A batch that fails as a whole is retried one sample at a time, each from the state
it had before the batch (whatever the failed batch had already changed is undone). Running out of
memory (MemoryError, CUDA out of memory) is retried the same way, and a sample that still runs out
of memory alone, after one more try, becomes an `out_of_memory` reject: one huge image never fails
the run, its retries or its resumes. Each batch's time is shared out among its samples (`sample.timings`), so that the
stats of a shard follow from its samples wherever they were processed. Stages know nothing of
executors: an executor calls `setup()` once per process, then the stage on lists of samples.
"""

from __future__ import annotations

import copy
import gc
import logging
import time

from .images import ImageRejected
from .reasons import OUT_OF_MEMORY, STAGE_ERROR
from .records import Sample


def _memory_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [MemoryError]
    try:
        import torch

        errors.append(torch.cuda.OutOfMemoryError)
    except (ImportError, AttributeError):
        pass
    return tuple(errors)


MEMORY_ERRORS = _memory_errors()
# torch's CPU allocator fails with a plain RuntimeError; these words tell it apart.
MEMORY_MESSAGES = ("can't allocate memory", "out of memory", "cannot allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MEMORY_ERRORS):
        return True
    return isinstance(error, RuntimeError) and any(words in str(error).lower() for words in MEMORY_MESSAGES)


log = logging.getLogger(__name__)


def free_memory() -> None:
    """Give back what a failed attempt held before trying again (host garbage, CUDA's cache)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except (ImportError, RuntimeError):
        pass


def snapshot(sample: Sample) -> dict:
    """The sample's fields, with its lists and dicts copied: enough to undo what a stage changed
    (stages set fields and fill lists; they never write into the arrays they are given)."""
    return {name: copy.copy(value) if isinstance(value, list | dict) else value
            for name, value in vars(sample).items()}


def restore(sample: Sample, state: dict) -> None:
    vars(sample).clear()
    vars(sample).update({name: copy.copy(value) if isinstance(value, list | dict) else value
                         for name, value in state.items()})


CPU_TASK = "cpu"  # runs beside the reader, in CPU tasks (word lists, decoding, classical proposals)
MODEL_ACTOR = "model"  # holds a model: runs where the executor places models (actors, a GPU with --device)


class Stage:
    name = "stage"
    placement = CPU_TASK

    @property
    def loads_model(self) -> bool:
        return self.placement == MODEL_ACTOR

    def setup(self) -> None:
        """Load models or word lists; called once per process before the first batch."""

    def process(self, sample: Sample) -> None:
        raise NotImplementedError

    def process_batch(self, samples: list[Sample]) -> None:
        for sample in samples:
            self._guarded(self.process, sample)

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        live = [sample for sample in samples if sample.alive]
        if not live:
            return samples
        start = time.perf_counter()
        before = [snapshot(sample) for sample in live]
        if _attempt(self.process_batch, live) is not None:  # failed as a whole: one sample at a time
            log.debug("%s: batch of %d failed, retrying one by one", self.name, len(live))
            free_memory()
            for sample, state in zip(live, before, strict=True):
                restore(sample, state)  # undo whatever the failed batch had already done to it
                self._guarded(lambda s: self.process_batch([s]), sample, retry_memory=len(live) > 1)
        share_time(live, self.name, time.perf_counter() - start)
        return samples

    def _guarded(self, function, sample: Sample, retry_memory: bool = True) -> None:
        """Run `function(sample)`; a failure becomes the sample's reject. Out of memory is tried once
        more alone, from the sample's state before, when `retry_memory`; then it is a reject too."""
        state = snapshot(sample) if retry_memory else None
        error = _attempt(function, sample)
        if state is not None and is_out_of_memory(error):
            log.debug("%s ran out of memory on %s; retrying it once alone", self.name, sample.key)
            free_memory()
            restore(sample, state)
            error = _attempt(function, sample)
        if error is None:
            return
        if isinstance(error, ImageRejected):
            sample.drop(error.reason, error.detail, self.name)
        elif is_out_of_memory(error):
            log.warning("%s ran out of memory on %s alone: rejected as %s", self.name, sample.key, OUT_OF_MEMORY)
            free_memory()
            sample.drop(OUT_OF_MEMORY, f"{type(error).__name__}: {error}".splitlines()[0][:300], self.name)
        else:
            sample.drop(STAGE_ERROR, f"{type(error).__name__}: {error}", self.name)


def _attempt(function, argument) -> Exception | None:
    """`function(argument)`; returns its exception, if any, without its traceback: the frames of a
    failed attempt (and the memory they hold) are released before anything is retried."""
    try:
        function(argument)
    except Exception as error:
        log.debug("attempt failed", exc_info=True)
        error.__traceback__ = None
        error.__context__ = error.__cause__ = None
        return error
    return None


def split_by_placement(stages: list[Stage]) -> tuple[list[Stage], list[Stage]]:
    """(CPU stages, model stages) of one stage list: an executor runs the first part where it reads
    and the second where its models live. CPU stages come first, so that samples cross over once."""
    cut = next((i for i, stage in enumerate(stages) if stage.placement == MODEL_ACTOR), len(stages))
    cpu, model = stages[:cut], stages[cut:]
    if any(stage.placement != MODEL_ACTOR for stage in model):
        raise ValueError(f"a CPU stage after a model stage: {[stage.name for stage in stages]}")
    return cpu, model


def share_time(samples: list[Sample], name: str, seconds: float) -> None:
    """Charge `seconds` of batch time to the samples of the batch in equal parts."""
    for sample in samples:
        sample.timings[name] = sample.timings.get(name, 0.0) + seconds / len(samples)


def stage_stats(samples: list[Sample]) -> dict[str, dict]:
    """Per-stage seconds, samples that reached the stage, drops by reason (and timed phases), from
    the samples themselves: the same numbers whichever executor or worker processed them."""
    stats: dict[str, dict] = {}
    for sample in samples:
        for name, seconds in sample.timings.items():
            stage, _, phase = name.partition(".")
            entry = stats.setdefault(stage, _empty_stats())
            if phase:
                entry.setdefault("phases", {})[phase] = entry.get("phases", {}).get(phase, 0.0) + seconds
            else:
                entry["seconds"] += seconds
                entry["samples_in"] += 1
        if sample.reject is not None:
            dropped = stats.setdefault(sample.reject.stage or "source", _empty_stats())["dropped"]
            dropped[sample.reject.reason] = dropped.get(sample.reject.reason, 0) + 1
    return _rounded(stats)


def merge_stage_stats(per_shard: list[dict]) -> dict[str, dict]:
    """Sum stage stats of several shards into one."""
    merged: dict[str, dict] = {}
    for stages in per_shard:
        for stage, stats in stages.items():
            into = merged.setdefault(stage, _empty_stats())
            into["seconds"] += stats["seconds"]
            into["samples_in"] += stats["samples_in"]
            for reason, count in stats["dropped"].items():
                into["dropped"][reason] = into["dropped"].get(reason, 0) + count
            for phase, seconds in stats.get("phases", {}).items():
                into.setdefault("phases", {})[phase] = into.get("phases", {}).get(phase, 0.0) + seconds
    return _rounded(merged)


def _empty_stats() -> dict:
    return {"seconds": 0.0, "samples_in": 0, "dropped": {}}


def _rounded(stats: dict[str, dict]) -> dict[str, dict]:
    for entry in stats.values():
        entry["seconds"] = round(entry["seconds"], 3)
        if "phases" in entry:
            entry["phases"] = {phase: round(seconds, 3) for phase, seconds in entry["phases"].items()}
    return stats
