"""The in-process executor: a plain loop over shards and batches (tests, small jobs, debugging)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..records import Sample
from ..stage import Stage
from ..write import CorpusWriter


class LocalExecutor:
    name = "local"

    def __init__(self, stages: list[Stage], writer: CorpusWriter, images_per_batch: int):
        self.stages = stages
        self.writer = writer
        self.images_per_batch = images_per_batch

    def run(self, shards: Iterable[tuple[int, list[Sample]]], on_batch: Callable[[list[Sample]], None]) -> list[dict]:
        for stage in self.stages:
            stage.setup()
        results = []
        for shard, samples in shards:
            for start in range(0, len(samples), self.images_per_batch):
                batch = samples[start : start + self.images_per_batch]
                for stage in self.stages:
                    batch = stage(batch)
                on_batch(batch)
            stage_stats = {stage.name: stage.take_stats() for stage in self.stages}
            results.append(self.writer.write_shard(shard, samples, stage_stats))
        return results
