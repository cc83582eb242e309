"""The base of every stage: batching, timing, counters and error capture (datatrove's PipelineStep).

A concrete stage writes `process(sample)` (per sample) or `process_batch(samples)` (batched models).
It rejects a sample with `sample.drop(reason, detail)`; an exception is caught here and becomes a
reject row `stage_error` carrying the exception class and message, so one bad sample never takes
down its batch. Each batch's time is shared out among its samples (`sample.timings`), so that the
stats of a shard follow from its samples wherever they were processed. Stages know nothing of
executors: an executor calls `setup()` once per process, then the stage on lists of samples.
"""

from __future__ import annotations

import logging
import time

from .images import ImageRejected
from .reasons import STAGE_ERROR
from .records import Sample


def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [MemoryError]
    try:
        import torch

        errors.append(torch.cuda.OutOfMemoryError)
    except (ImportError, AttributeError):
        pass
    return tuple(errors)


TRANSIENT_ERRORS = _transient_errors()
log = logging.getLogger(__name__)


class Stage:
    name = "stage"

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
        try:
            self.process_batch(live)
        except TRANSIENT_ERRORS:
            raise
        except Exception:  # a batched stage failed as a whole: find the culprit(s) one sample at a time
            log.debug("%s: batch of %d failed, retrying one by one", self.name, len(live), exc_info=True)
            for sample in live:
                self._guarded(lambda s: self.process_batch([s]), sample)
        share_time(live, self.name, time.perf_counter() - start)
        return samples

    def _guarded(self, function, sample: Sample) -> None:
        try:
            function(sample)
        except ImageRejected as rejected:
            sample.drop(rejected.reason, rejected.detail, self.name)
        except TRANSIENT_ERRORS:
            raise  # not the sample's fault: fail the task (Ray retries it; a rerun resumes), never a reject row
        except Exception as error:
            log.debug("%s failed on %s", self.name, sample.key, exc_info=True)
            sample.drop(STAGE_ERROR, f"{type(error).__name__}: {error}", self.name)


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
