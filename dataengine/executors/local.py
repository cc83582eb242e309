"""The in-process executor: a plain loop over shards and batches (tests, small jobs, debugging)."""

from __future__ import annotations

from ..stages import build_stages
from . import ShardSpec


class LocalExecutor:
    name = "local"

    def __init__(self, config, device: str):
        self.stages = build_stages(config, device)
        self.images_per_batch = config.images_per_batch

    def setup(self) -> None:
        for stage in self.stages:
            stage.setup()

    def run(self, source, shards: list[ShardSpec], writer, progress) -> None:
        for spec in shards:
            samples = source.read(spec.start, spec.stop)
            for start in range(0, len(samples), self.images_per_batch):
                batch = samples[start : start + self.images_per_batch]
                for stage in self.stages:
                    batch = stage(batch)
                progress.images(batch)
            writer.write_shard(spec.shard, samples)
            progress.shard_done()

    def close(self) -> None:
        pass
