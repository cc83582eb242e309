"""The in-process executor: a plain loop over shards and batches (tests, small jobs, debugging)."""

from __future__ import annotations

from ..stages import build_stages
from . import ShardSpec


class LocalExecutor:
    name = "local"

    def __init__(self, config):
        self.config = config
        self.device = config.device
        self.stages = []
        self.images_per_batch = config.images_per_batch

    def setup(self) -> None:
        from ..clip import resolve_device

        self.device = resolve_device(self.config.device)
        self.stages = build_stages(self.config, self.device)
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
