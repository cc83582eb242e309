"""Data-parallel training throughput: the same MPT run on 1 process and on 2 processes (torchrun,
gloo on CPU), measured in one run, and their ratio. With CUDA, also 1 GPU at batch 256, and every
GPU of the node under torchrun (NCCL); without, those rows say they were not measured.

Pairs/s are steady state, from rank 0's log.jsonl (the first logged steps are warm-up and not
counted; a logged step counts the pairs of the global batch). On CPU the two processes share the
machine's cores: one thread each (torchrun's default), against one process with torch's own
thread count, so the ratio says what splitting the batch costs or gains on this CPU, not what a
second GPU would bring. Random weights cost the same as trained ones.

    python bench/bench_distributed.py                             # ViT-B-16, global batch 16, CPU
    python bench/bench_distributed.py --clip ViT-L-14 --gpu-batch-size 256
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_train import steady_rate
from common import offline_environment

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic pair writer of the tests


def measure(processes: int, device: str, batch_size: int, shards: str, out: Path, args) -> float:
    """pairs/s of `processes` ranks (1: a plain process) training MPT with this global batch."""
    launch = ([sys.executable, "-m", "finetune"] if processes == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "finetune"])
    command = [*launch, "--shards", shards, "--out", str(out), "--clip", args.clip, "--mode", "mpt",
               "--epochs", "1000", "--batch-size", str(batch_size), "--workers", str(args.workers), "--device", device,
               "--max-steps", str(args.warmup + args.steps), "--log-every", "1", "--checkpoint-every", str(10**9),
               "--no-progress"]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"{' '.join(command[:8])} ... failed:\n{run.stderr[-3000:]}")
    return steady_rate(out / "log.jsonl", args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="ViT-B-16", help="open_clip model (default: ViT-B-16, random init)")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch on CPU (default: 16)")
    parser.add_argument("--gpu-batch-size", type=int, default=256, help="global batch on GPU (default: 256)")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per row (default: 4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per row (default: 2)")
    parser.add_argument("--workers", type=int, default=1, help="data loader processes per rank (default: 1)")
    args = parser.parse_args()
    offline_environment()
    import torch
    from pairs import write_pair_shards

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as folder:
        folder = Path(folder)
        largest = max(args.batch_size, args.gpu_batch_size if gpus else 0)
        pairs = largest * (args.warmup + args.steps + 1)
        shards = write_pair_shards(folder / "shards", pairs=pairs, per_shard=max(1, pairs // 8))
        cpu = {n: measure(n, "cpu", args.batch_size, shards, folder / f"cpu{n}", args) for n in (1, 2)}
        gpu = {n: measure(n, "cuda", args.gpu_batch_size, shards, folder / f"gpu{n}", args)
               for n in sorted({1, gpus}) if gpus}
    print(f"model {args.clip}, mask prompt tuning, {args.steps} timed steps per row")
    print(f"CPU, batch {args.batch_size}, 1 process   : {cpu[1]:8.2f} pairs/s")
    print(f"CPU, batch {args.batch_size}, 2 processes : {cpu[2]:8.2f} pairs/s  (gloo, {os.cpu_count()} cores shared)")
    print(f"2 processes / 1 process on CPU  : {cpu[2] / cpu[1]:.2f}x")
    if not gpus:
        print(f"GPU, batch {args.gpu_batch_size}: not measured (no CUDA device here)")
        return
    print(f"1 GPU, batch {args.gpu_batch_size}       : {gpu[1]:8.2f} pairs/s ({torch.cuda.get_device_name(0)})")
    if gpus == 1:
        print("multi-GPU scaling: not measured (one GPU here)")
    else:
        print(f"{gpus} GPUs, batch {args.gpu_batch_size}      : {gpu[gpus]:8.2f} pairs/s (NCCL); "
              f"scaling {gpu[gpus] / gpu[1]:.2f}x")


if __name__ == "__main__":
    main()
