"""Bootstrap uncertainty of the Fréchet distance, with cheap replicates.

A replicate resamples the *samples* with replacement (seeded) and keeps the
reference side fixed, so the reference's PSD factor F (Σ_ref = F Fᵀ) is
computed once; a replicate is then the resampled mean and covariance (one
weighted Gram matrix, from bincount weights: no copy of the features) and one
symmetric eigenvalue problem Fᵀ Σ F. The spread is the samples' sampling
error only (the reference counts as fixed, as ADM's stored statistics are).
A split-half FID (two disjoint random halves of the samples) is a floor: what
FID reads between two draws of the same model.
"""
from __future__ import annotations

import numpy as np
import torch

from mimflow_core.errors import MIMFlowError

from .frechet import frechet_distance, gaussian_stats, psd_factor


def _weighted_fd(x: torch.Tensor, weights: torch.Tensor, mu_ref: torch.Tensor, trace_ref: float,
                 factor: torch.Tensor) -> float:
    n = weights.sum()
    mu = weights @ x / n
    centred = x - mu
    sigma = (centred * weights[:, None]).T @ centred / (n - 1)
    eig = torch.linalg.eigvalsh(factor.T @ sigma @ factor)
    eig = eig[eig > eig.max().clamp_min(0) * len(eig) * torch.finfo(torch.float64).eps]
    diff = mu - mu_ref
    return float(diff @ diff + sigma.trace() + trace_ref - 2 * eig.sqrt().sum())


def bootstrap_fid(samples: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, replicates: int,
                  seed: int = 0) -> dict:
    """Mean, std and 95 % percentile interval of FID over ``replicates`` resamples of ``samples``."""
    if replicates < 1:
        raise MIMFlowError(f"--bootstrap {replicates}: need at least 1 replicate")
    x = torch.from_numpy(np.asarray(samples, np.float64))
    sigma_ref = np.asarray(sigma_ref, np.float64)
    sigma_ref = (sigma_ref + sigma_ref.T) / 2
    factor, mu_t = psd_factor(sigma_ref), torch.from_numpy(np.asarray(mu_ref, np.float64))
    rng = np.random.default_rng(seed)
    values = np.empty(replicates)
    for r in range(replicates):
        counts = np.bincount(rng.integers(0, len(x), len(x)), minlength=len(x))
        values[r] = _weighted_fd(x, torch.from_numpy(counts.astype(np.float64)), mu_t, float(np.trace(sigma_ref)),
                                 factor)
    low, high = np.percentile(values, [2.5, 97.5])
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if replicates > 1 else 0.0,
            "ci95": [float(low), float(high)], "replicates": replicates, "seed": seed}


def split_half_fid(samples: np.ndarray, seed: int = 0) -> float:
    """FID between two disjoint random halves of ``samples``."""
    order = np.random.default_rng(seed).permutation(len(samples))
    half = len(samples) // 2
    return frechet_distance(*gaussian_stats(samples[order[:half]]), *gaussian_stats(samples[order[half:2 * half]]))
