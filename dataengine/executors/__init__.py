"""Executors run the same list of stages over partitions of the input; they never know what a stage does.

`partition(samples, samples_per_shard)` is the one definition of the input-to-shard mapping:
shard id = position in the source's deterministic order // samples_per_shard.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..records import Sample

DUPLICATE_KEY = "duplicate_key"


def partition(samples: Iterable[Sample], samples_per_shard: int) -> Iterator[tuple[int, list[Sample]]]:
    """(shard id, samples) in order; a repeated sample key is rejected, never silently merged."""
    seen: set[str] = set()
    shard: list[Sample] = []
    for index, sample in enumerate(samples):
        sample.index = index
        if sample.key in seen:
            sample.drop(DUPLICATE_KEY, f"key {sample.key} already used by an earlier input", "source")
        seen.add(sample.key)
        shard.append(sample)
        if len(shard) == samples_per_shard:
            yield index // samples_per_shard, shard
            shard = []
    if shard:
        yield shard[0].index // samples_per_shard, shard


def merge_stage_stats(per_shard: list[dict]) -> dict:
    """Sum per-shard stage stats (seconds, samples, drops by reason, timed phases) into one."""
    merged: dict[str, dict] = {}
    for stages in per_shard:
        for name, stats in stages.items():
            into = merged.setdefault(name, {"seconds": 0.0, "samples_in": 0, "dropped": {}})
            into["seconds"] = round(into["seconds"] + stats["seconds"], 3)
            into["samples_in"] += stats["samples_in"]
            for reason, count in stats["dropped"].items():
                into["dropped"][reason] = into["dropped"].get(reason, 0) + count
            for phase, seconds in stats.get("phases", {}).items():
                phases = into.setdefault("phases", {})
                phases[phase] = round(phases.get(phase, 0.0) + seconds, 3)
    return merged
