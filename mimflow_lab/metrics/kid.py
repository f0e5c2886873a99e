"""Kernel Inception Distance (Bińkowski et al. 2018), as torch-fidelity computes it.

KID is the unbiased estimate of MMD² with the cubic polynomial kernel
k(x, y) = (xᵀy / d + 1)³, averaged over random subsets (torch-fidelity's
defaults: 100 subsets of 1000, ``numpy.random.RandomState(2020)``, drawn
without replacement, samples first). Unlike FID it is unbiased in the number
of samples, so runs of different sizes can be compared. Subsets are drawn the
same way torch-fidelity draws them, so with the same seed the numbers match it
on the same features; the kernel is computed in float64.
"""
from __future__ import annotations

import numpy as np
import torch

from mimflow_core.errors import MIMFlowError

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020  # torch-fidelity's default rng_seed


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² of two equal-size sets with the cubic kernel (diagonals of K_xx, K_yy left out)."""
    m = len(x)
    k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kid(
    samples: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = KID_SEED,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """(mean, std) of MMD² over ``subsets`` random subsets of ``subset_size`` of each set.

    Fewer points than ``subset_size`` in either set is an error (as in
    torch-fidelity): a smaller subset is a different estimator, so the caller
    must choose it (``adm_metrics`` does, with a warning, and records it).
    """
    x = torch.as_tensor(np.asarray(samples) if not torch.is_tensor(samples) else samples)
    y = torch.as_tensor(np.asarray(reference) if not torch.is_tensor(reference) else reference)
    if x.dim() != 2 or x.shape[1:] != y.shape[1:]:
        raise MIMFlowError(f"KID: feature shapes differ or are not (N, d): {tuple(x.shape)} vs {tuple(y.shape)}")
    if subsets < 1 or subset_size < 2:
        raise MIMFlowError(f"KID: need >= 1 subset of >= 2 points, got {subsets} of {subset_size}")
    if min(len(x), len(y)) < subset_size:
        raise MIMFlowError(f"KID: subset size {subset_size} exceeds the number of points "
                           f"({len(x)} samples, {len(y)} reference); pass a smaller subset size")
    x, y = x.to(device, torch.float64), y.to(device, torch.float64)
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise MIMFlowError("KID: features contain NaN or Inf")
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        a = rng.choice(len(x), subset_size, replace=False)
        b = rng.choice(len(y), subset_size, replace=False)
        mmds[i] = mmd2_unbiased(x[torch.from_numpy(a)], y[torch.from_numpy(b)])
    return float(mmds.mean()), float(mmds.std())
