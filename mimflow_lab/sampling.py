"""Sharded, resumable sampling from a checkpoint, with features extracted on the fly.

The producers here fill the shards of :mod:`mimflow_lab.shards` (one batch
of consecutive global indices each). Everything about sample ``i`` (its
noise, its label) depends only on ``(seed, i)``, and a shard is always
computed as the same batch, so the result does not depend on how many
processes share the work or on where a restarted run resumed.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from mimflow_core.errors import MIMFlowError

from mimflow_lab.metrics.inception_features import Features, inception_features, to_uint8
from mimflow_lab.metrics.inception import FIDInception

Producer = Callable[[np.ndarray], dict[str, np.ndarray]]


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
