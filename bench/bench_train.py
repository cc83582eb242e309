"""Training throughput, mask prompt tuning vs full finetune, same model and pairs, one run.

Prints pairs/s of each mode in steady state (the first logged steps are warm-up and not counted)
and their ratio. Random weights cost the same as trained ones.

    python bench/bench_train.py                                   # ViT-B-16 on CPU, batch 32
    python bench/bench_train.py --device cuda --batch-size 256 --steps 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import offline_environment

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic pair writer of the tests


def steady_rate(log: Path, warmup: int) -> float:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    first, last = records[warmup - 1], records[-1]
    return (last["pairs"] - first["pairs"]) / (last["seconds"] - first["seconds"])


def measure(mode: str, shards: str, out: Path, args) -> float:
    from finetune.config import TrainConfig
    from finetune.train import train

    train(TrainConfig(shards=shards, out=str(out), clip=args.clip, mode=mode, epochs=1000, batch_size=args.batch_size,
                      workers=args.workers, device=args.device, max_steps=args.warmup + args.steps, log_every=1,
                      checkpoint_every=10**9, progress=False))
    return steady_rate(out / "log.jsonl", args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="ViT-B-16", help="open_clip model (default: ViT-B-16, random init)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per mode (default: 6)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per mode (default: 2)")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (default: 2)")
    args = parser.parse_args()
    offline_environment()
    from pairs import write_pair_shards

    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        folder = Path(folder)
        pairs = args.batch_size * (args.warmup + args.steps + 1)
        shards = write_pair_shards(folder / "shards", pairs=pairs, per_shard=max(1, pairs // 4))
        rates = {mode: measure(mode, shards, folder / mode, args) for mode in ("mpt", "ft")}
    print(f"model {args.clip} on {args.device}, batch {args.batch_size}, {args.steps} timed steps per mode")
    print(f"mask prompt tuning (CLIP frozen): {rates['mpt']:8.2f} pairs/s")
    print(f"full finetune (visual tower)    : {rates['ft']:8.2f} pairs/s")
    print(f"MPT / full finetune             : {rates['mpt'] / rates['ft']:.2f}x")


if __name__ == "__main__":
    main()
