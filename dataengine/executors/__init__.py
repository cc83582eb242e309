"""Executors run the same list of stages over shards of the input; they never know what a stage does.

`plan_shards` is the one definition of the input-to-shard mapping: shard N holds the samples at
positions N * samples_per_shard .. (N + 1) * samples_per_shard - 1 of the source's deterministic
order, whatever executor or number of workers processes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class ShardSpec:
    shard: int
    start: int  # first sample position
    stop: int  # one past the last

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan_shards(total: int, samples_per_shard: int) -> list[ShardSpec]:
    return [ShardSpec(start // samples_per_shard, start, min(start + samples_per_shard, total))
            for start in range(0, total, samples_per_shard)]


EXECUTORS = Registry("executor", "--executor", {
    "ray": "dataengine.executors.ray:RayExecutor",
    "local": "dataengine.executors.local:LocalExecutor",
})


def create_executor(config):
    """`setup()` then sets the executor's `device`: where the model stages run ("cpu" or "cuda...")."""
    return EXECUTORS.get(config.executor)(config)
