"""Sharded, resumable sampling from a checkpoint, with features extracted on the fly.

The work is cut into shards of consecutive global indices (one batch each).
Everything about sample ``i`` (its noise, its label) depends only on
``(seed, i)``, and a shard is always computed as the same batch, so the
result does not depend on how many processes share the work: under
``torchrun`` rank r takes shards r, r + world, ... (``torch.distributed``,
NCCL on GPUs, Gloo on CPUs) and rank 0 merges. Each shard is written
atomically as an npz (``indices`` plus feature arrays); a restarted run
skips the shards already on disk.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from mimflow_core.distributed import Process
from mimflow_core.errors import MIMFlowError

from mimflow_lab.metrics.inception_features import Features, inception_features, to_uint8
from mimflow_lab.metrics.inception import FIDInception
from mimflow_lab.metrics.npz import write_npz

Producer = Callable[[np.ndarray], dict[str, np.ndarray]]


# ------------------------------------------------------------------ shards

@dataclass(frozen=True)
class ShardPlan:
    """``total`` items cut into shards of ``shard_size`` consecutive indices, stored under ``directory``."""

    total: int
    shard_size: int
    directory: Path

    @property
    def num_shards(self) -> int:
        return -(-self.total // self.shard_size)

    def indices(self, shard: int) -> np.ndarray:
        return np.arange(shard * self.shard_size, min((shard + 1) * self.shard_size, self.total))

    def path(self, shard: int) -> Path:
        return self.directory / f"shard_{shard:06d}.npz"

    def missing(self) -> list[int]:
        return [s for s in range(self.num_shards) if not self.path(s).is_file()]


def run_shards(plan: ShardPlan, produce: Producer, process: Process) -> int:
    """Compute this rank's missing shards (round-robin by rank); returns how many it wrote."""
    mine = [s for s in plan.missing() if s % process.world == process.rank]
    with tqdm(total=len(mine), desc=f"shards (rank {process.rank})", unit="shard", file=sys.stderr,
              disable=not mine, dynamic_ncols=True) as bar:
        for shard in mine:
            indices = plan.indices(shard)
            write_npz(plan.path(shard), {"indices": indices, **produce(indices)})
            bar.update(1)
    return len(mine)


def merge_shards(plan: ShardPlan, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """All shards' arrays but ``skip`` concatenated in index order; checks nothing is missing."""
    if missing := plan.missing():
        raise MIMFlowError(f"{plan.directory}: {len(missing)} shard(s) missing (first: {plan.path(missing[0]).name})")
    parts: dict[str, list[np.ndarray]] = {}
    for shard in range(plan.num_shards):
        with np.load(plan.path(shard)) as data:
            if not np.array_equal(data["indices"], plan.indices(shard)):
                raise MIMFlowError(f"{plan.path(shard)}: holds other indices than this run expects")
            for key in (k for k in data.files if k not in skip):
                parts.setdefault(key, []).append(data[key])
    return {key: np.concatenate(arrays) for key, arrays in parts.items()}


def shard_batches(plan: ShardPlan, key: str) -> Iterator[np.ndarray]:
    """One array of every shard, in order, one shard in memory at a time (to stream images out)."""
    for shard in range(plan.num_shards):
        with np.load(plan.path(shard)) as data:
            yield data[key]


# ------------------------------------------------------------------ what sample i is

def sample_noise(seed: int, indices: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Gaussian noise of each sample from its own stream ``SeedSequence([seed, i])``."""
    return torch.from_numpy(np.stack([np.random.default_rng([seed, int(i)]).standard_normal(shape)
                                      for i in indices]).astype(np.float32))


def balanced_labels(seed: int, total: int, num_classes: int) -> np.ndarray:
    """``total`` labels with every class equally often (±1), in a seeded random order; -1s if unconditional."""
    if num_classes <= 0:
        return np.full(total, -1, dtype=np.int64)
    return np.random.default_rng([seed, total, num_classes]).permutation(np.arange(total) % num_classes)


def generation_producer(model: torch.nn.Module, inception: FIDInception, labels: np.ndarray, cfg: float, seed: int,
                        device: torch.device, keep_images: bool) -> Producer:
    """Sample, quantise to uint8 (as a saved image would be) and keep the Inception features."""
    shape = (model.config.num_tokens, model.config.latent_dim)

    def produce(indices: np.ndarray) -> dict[str, np.ndarray]:
        y = torch.from_numpy(labels[indices]).to(device)
        images = model.sample(y, cfg=cfg, noise=sample_noise(seed, indices, shape).to(device))
        if not torch.isfinite(images).all():
            raise MIMFlowError(f"the model produced NaN/Inf images for samples {indices[0]}..{indices[-1]} "
                               f"(cfg {cfg}); finished shards are kept")
        uint8 = to_uint8(images)
        out = {"labels": labels[indices], **inception_features(inception, uint8).arrays()}
        return {**out, "images": uint8.cpu().numpy()} if keep_images else out

    return produce


def reconstruction_producer(model: torch.nn.Module, inception: FIDInception, dataset, device: torch.device,
                            keep_images: bool, with_originals: bool = True) -> Producer:
    """Encode (no mask, no noise) and decode dataset images; features of the reconstructions and, when they are
    the reference (``with_originals``), of the originals too (``real_*``): with a reference batch given, running
    the originals through the Inception would double the cost for nothing."""

    def produce(indices: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.stack([dataset[int(i)][0] for i in indices]).to(device)
        with torch.no_grad():
            recon = model.decode(model.encode(x).z)
        fake = to_uint8(recon)
        out = {"labels": dataset.labels[indices], **inception_features(inception, fake).arrays()}
        if with_originals:
            out.update({f"real_{k}": v for k, v in inception_features(inception, to_uint8(x)).arrays().items()})
        return {**out, "images": fake.cpu().numpy()} if keep_images else out

    return produce


def features_of(merged: dict[str, np.ndarray], prefix: str = "") -> Features:
    """The :class:`Features` stored under ``prefix`` in merged shard arrays."""
    return Features.from_arrays({k[len(prefix):]: v for k, v in merged.items() if k.startswith(prefix)})
