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

from typing import Iterator

import numpy as np
import torch

from mimflow_core.errors import MIMFlowError

from .precision_recall import all_finite

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


def check_subset_size(size: int | None, counts: dict[str, int]) -> None:
    """An explicit --kid-subset-size must fit in every set it draws from (``counts``: what -> images), as
    torch-fidelity requires: refused in one line naming the set, before any work."""
    for what, count in counts.items():
        if size is not None and size > count:
            raise MIMFlowError(f"--kid-subset-size {size}: {what} holds {count} images, fewer than one subset "
                               f"(KID draws subsets without replacement); pass at most {min(counts.values())} "
                               "or leave the option out")


def _feature_sets(samples: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, subsets: int,
                  subset_size: int, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets as (N, d) tensors on ``device``, refused in one line unless ``subsets`` subsets of
    ``subset_size`` can be drawn from each. They keep their float type: each subset is converted to float64
    when drawn (:func:`_subset`), so no float64 copy of all features is made.

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
    x, y = (t.to(device) if t.is_floating_point() else t.to(device, torch.float64) for t in (x, y))
    if not (all_finite(x) and all_finite(y)):
        raise MIMFlowError("KID: features contain NaN or Inf")
    return x, y


def _subsets(num_samples: int, num_reference: int, subsets: int, subset_size: int, seed: int
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (sample, reference) index subsets torch-fidelity draws: one RandomState, samples first."""
    rng = np.random.RandomState(seed)
    for _ in range(subsets):
        a = rng.choice(num_samples, subset_size, replace=False)
        b = rng.choice(num_reference, subset_size, replace=False)
        yield torch.from_numpy(a), torch.from_numpy(b)


def _subset(features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return features[rows.to(features.device)].double()


def kid(
    samples: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = KID_SEED,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """(mean, std) of MMD² over ``subsets`` random subsets of ``subset_size`` of each set."""
    x, y = _feature_sets(samples, reference, subsets, subset_size, device)
    mmds = np.array([mmd2_unbiased(_subset(x, a), _subset(y, b))
                     for a, b in _subsets(len(x), len(y), subsets, subset_size, seed)])
    return float(mmds.mean()), float(mmds.std())


def _within(k: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_{i≠j} w_i w_j k_ij / Σ_{i≠j} w_i w_j per row of ``weights``: the unbiased within-set term of a set whose
    point i is drawn w_i times, pairs of copies of one point left out like the diagonal."""
    pairs = weights.sum(1) ** 2 - (weights * weights).sum(1)
    return (((weights @ k) * weights).sum(1) - (weights * weights) @ k.diagonal()) / pairs


def kid_replicates(
    samples: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    sample_counts: np.ndarray,
    reference_counts: np.ndarray | None = None,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = KID_SEED,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """KID of each bootstrap resample: row r of ``sample_counts`` (replicates, N) says how often each sample is
    drawn (and of ``reference_counts`` each reference image; None keeps the reference fixed).

    A resample keeps :func:`kid`'s subsets and weights their points by how
    often they were drawn; within a set, pairs of copies of one point are left
    out as the diagonal is (a point drawn twice is not two independent draws:
    counting its copies as a pair would bias MMD² by k(x, x)). So counts of all
    ones give :func:`kid`'s mean exactly. Each subset's kernels are computed
    once for every replicate: the cost is one KID plus (replicates x subsets x
    subset_size²) multiply-adds.
    """
    x, y = _feature_sets(samples, reference, subsets, subset_size, device)
    values = []
    for a, b in _subsets(len(x), len(y), subsets, subset_size, seed):
        u = torch.from_numpy(sample_counts[:, a.numpy()]).to(device, torch.float64)
        v = (torch.ones(1, subset_size, dtype=torch.float64, device=device) if reference_counts is None
             else torch.from_numpy(reference_counts[:, b.numpy()]).to(device, torch.float64))
        xs, ys = _subset(x, a), _subset(y, b)
        between = ((u @ _poly_kernel(xs, ys)) * v).sum(1) / (u.sum(1) * v.sum(1))
        values.append((_within(_poly_kernel(xs, xs), u) + _within(_poly_kernel(ys, ys), v) - 2 * between).cpu())
    return np.nanmean(torch.stack(values).numpy(), axis=0)
