"""torchrun / DDP helpers: one process per device, NCCL on GPUs and gloo on CPU; rank 0 writes.

Under ``torchrun`` the environment holds RANK, WORLD_SIZE and LOCAL_RANK; without it the stage runs as a single
process (world size 1) through the same code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """Initialise the process group when launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    launched = "RANK" in os.environ  # torchrun, even with one process (the NCCL world-size-1 smoke test)
    if launched and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Dist(rank, world, local_rank, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_objects(obj: object) -> list[object]:
    """``obj`` from every rank, in rank order (a one-element list without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_across(value: float, device: torch.device) -> float:
    """The mean of a per-rank scalar over all ranks."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's value of ``flag`` on every rank."""
    if not dist.is_initialized():
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())
