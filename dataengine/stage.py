"""The base of every stage: batching, timing, counters and error capture (datatrove's PipelineStep).

A concrete stage writes `process(sample)` (per sample) or `process_batch(samples)` (batched models).
It rejects a sample with `sample.drop(reason, detail)`; an exception is caught here and becomes a
reject row `stage_error` carrying the exception class and message, so one bad sample never takes
down its batch. Stages know nothing of executors: an executor calls `setup()` once, then the stage
on lists of samples.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from .images import ImageRejected
from .records import Sample

STAGE_ERROR = "stage_error"
log = logging.getLogger(__name__)


class Stage:
    name = "stage"

    def __init__(self):
        self.seconds = 0.0
        self.samples_in = 0
        self.dropped: Counter[str] = Counter()

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
        except Exception:  # a batched stage failed as a whole: find the culprit(s) one sample at a time
            log.debug("%s: batch of %d failed, retrying one by one", self.name, len(live), exc_info=True)
            for sample in live:
                self._guarded(lambda s: self.process_batch([s]), sample)
        self.seconds += time.perf_counter() - start
        self.samples_in += len(live)
        self.dropped.update(s.reject.reason for s in live if not s.alive)
        return samples

    def _guarded(self, function, sample: Sample) -> None:
        try:
            function(sample)
        except ImageRejected as rejected:
            sample.drop(rejected.reason, rejected.detail, self.name)
        except Exception as error:
            log.debug("%s failed on %s", self.name, sample.key, exc_info=True)
            sample.drop(STAGE_ERROR, f"{type(error).__name__}: {error}", self.name)

    def stats(self) -> dict:
        return {"seconds": round(self.seconds, 3), "samples_in": self.samples_in, "dropped": dict(self.dropped)}

    def reset_stats(self) -> None:
        self.seconds, self.samples_in, self.dropped = 0.0, 0, Counter()

    def take_stats(self) -> dict:
        """Stats since the last call (one shard's worth), then start counting afresh."""
        stats = self.stats()
        self.reset_stats()
        return stats
