"""Data-parallel training: the process group, the DDP wrapper and the global batch.

One Trainer runs on every rank (under torchrun, or as a Ray Train worker). The data is split into
`--data-ranks` R data ranks (default: one per process), each reading its own shards
(finetune.shards.PairStream) into local batches of B/R pairs; each process hosts R/P consecutive
data ranks, so one process with --data-ranks R reads the very batches R processes read. Global
batch t is every data rank's local batch t, in rank order. The region features of every rank are
gathered with their gradients, so that every rank computes the loss of the whole global batch.
The all-gather's backward sums the gradients of all ranks (each rank holds the same loss, so each
rank's features get world-size times their share) and DDP's average divides that back: the
parameters get exactly the gradient of the global batch's loss, as one process with the whole
batch would.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn

from .config import TrainConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # the process group was started here (and is ended here)

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, device: str) -> str:
        """A bare `cuda` means this rank's own GPU (torchrun's LOCAL_RANK)."""
        return f"cuda:{self.local_rank}" if self.distributed and device == "cuda" else device

    def hosted(self, data_ranks: int) -> range:
        """The data ranks this process reads: R/P consecutive ones."""
        per_process = data_ranks // self.size
        return range(self.rank * per_process, (self.rank + 1) * per_process)

    def wrap(self, module: torch.nn.Module, device: str) -> torch.nn.Module:
        """DDP over a phase's step module (it broadcasts rank 0's weights, frozen ones too, when it
        wraps). Every trainable parameter takes part in every forward (StepModule), so DDP needs no
        search for unused ones."""
        if not self.distributed:
            return module
        ids = [torch.device(device)] if device.startswith("cuda") else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def counts(self, *local: int) -> list[list[int]]:
        """Per rank, the numbers each rank passed (the same on every rank)."""
        if not self.distributed:
            return [list(local)]
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        return self._all_gather(torch.tensor([local], device=device)).tolist()

    def gather(self, regions: torch.Tensor, labels: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The regions (with their gradients) and labels of the whole global batch, in rank order;
        `counts`: the pairs of each rank. Ranks may hold different numbers of pairs (short last local
        batches, a data rank whose shards ran out, undecodable pairs skipped): each pads its share to
        the largest, and the padding is dropped after the gather."""
        if not self.distributed:
            return regions, labels
        rows = max(counts)
        if not regions.requires_grad:
            # every rank must take part in the gather's backward, even one whose forward left the trainable
            # parameters out (MPT with no patch masked out): its gradient then just stops here
            regions = regions.detach().requires_grad_()
        padded = torch.cat([regions, regions.new_zeros(rows - len(regions), regions.shape[1])])
        with warnings.catch_warnings():  # deprecated in favour of a private API; open_clip's gather uses it too
            warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather", FutureWarning)
            gathered = torch.cat(torch.distributed.nn.all_gather(padded))
        all_labels = self._all_gather(torch.cat([labels, labels.new_zeros(rows - len(labels))]))
        keep = torch.cat([torch.arange(count, device=labels.device) + rank * rows for rank, count in enumerate(counts)])
        return gathered[keep], all_labels[keep]

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's tensor on every rank (the same shape on each)."""
        if self.distributed:
            dist.broadcast(tensor, 0)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def leave(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def _all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)


def check_data_ranks(batch_size: int, data_ranks: int, processes: int, what: str) -> None:
    """Every process hosts the same number of data ranks, and every data rank the same local batch."""
    if processes < 1:
        raise TrainConfigError(f"{processes} {what}: there must be at least one")
    if data_ranks % processes:
        raise TrainConfigError(f"--data-ranks {data_ranks} must be a multiple of the {processes} {what} "
                               "(each reads the same number of data ranks)")
    if batch_size % data_ranks:
        raise TrainConfigError(f"--batch-size {batch_size} is the global batch: it must divide evenly over the "
                               f"{data_ranks} data ranks (--data-ranks; default: one per process) "
                               f"(e.g. {max(1, batch_size // data_ranks) * data_ranks})")


def join(device: str) -> World:
    """The process group this process belongs to: one already started (Ray Train starts it), else one
    started from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): NCCL for a
    GPU, gloo on CPU. A plain process is rank 0 of 1."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), local_rank)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)
