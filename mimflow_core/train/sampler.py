"""Where a step's data and random draws come from, so that resumed and multi-process runs repeat a single run.

Every random draw of a step (mask ratio, mask, latent noise, label dropout)
comes from a generator seeded by (seed, phase, step) and drawn for the *global*
batch; each rank takes its rows. With DistributedSampler's striding
(rank r holds global rows r, r+W, ...), N processes therefore compute exactly
the step of one process with the same global batch, and a resumed run repeats
the draws of an uninterrupted one.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

from mimflow_core.data import ImageDataset
from mimflow_core.distributed import Process


class ResumableSampler(Sampler[int]):
    """DistributedSampler (shuffled per epoch, no padding) that can start mid-epoch."""

    def __init__(self, dataset: ImageDataset, procs: Process, seed: int):
        self.inner = DistributedSampler(dataset, procs.world, procs.rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.inner.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.start:])

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)


def step_generator(seed: int, phase: int, step: int) -> torch.Generator:
    """The CPU generator of one step: same draws for every rank, every world size, every resume."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, phase, step]).generate_state(1)[0]))
