"""This process's place in a ``torchrun`` job: the one process-group setup every command shares.

Without ``torchrun`` a command is rank 0 of 1. Under ``torchrun`` it joins
the group (NCCL on GPUs, Gloo on CPUs, which is how the tests exercise it),
takes the GPU of its local rank, and leaves the group on exit.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Process:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar logs over ranks (identity on one process)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, (t / self.world).tolist()))


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def dist_info() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def current_process(device: str | torch.device = "cpu") -> Process:
    """This process's place in the group it already belongs to (rank 0 of 1 outside one).

    For library code that runs inside a command's :func:`distributed_process`
    or inside a group its caller set up itself (as the tests do): it takes
    the rank from the group and never joins or leaves one.
    """
    return Process(*dist_info(), torch.device(device))


@contextlib.contextmanager
def distributed_process(device: str | None = "auto", timeout: timedelta = timedelta(hours=6)) -> Iterator[Process]:
    """Yield this process's rank, world size and device, inside the torchrun group when there is one.

    The timeout is generous: ranks wait at final barriers while the slowest
    one finishes its shards.
    """
    device = resolve_device(device)
    if not dist.is_torchelastic_launched() or dist.is_initialized():
        yield current_process(device)
        return
    cuda = device.startswith("cuda")
    if cuda:
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    try:
        yield Process(dist.get_rank(), dist.get_world_size(), torch.device(device))
    finally:
        dist.destroy_process_group()
