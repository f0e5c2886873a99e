"""Bootstrap uncertainty of the Fréchet distance, with cheap replicates.

A replicate resamples the *samples* with replacement (seeded) and keeps the
reference side fixed, so the reference's PSD factor F (Σ_ref = F Fᵀ) is
computed once; a replicate is then the resampled mean and covariance (one
weighted Gram matrix, from bincount weights: no copy of the features) and one
symmetric eigenvalue problem Fᵀ Σ F. Precision, density and coverage use
the reference's balls only, so their tests are made once per sample and a
replicate reweights them (:func:`bootstrap_neighbours`). Recall and KID are
not bootstrapped: recall's balls are the samples' own k-NN radii, which
collapse to 0 when a resample draws a point k + 1 times, and KID's unbiased
estimate counts a point drawn twice as a pair of distinct ones. The spread is
the samples' sampling error only (the reference counts as fixed, as ADM's
stored statistics are), unless --bootstrap-reference asks to resample the
reference's features too for the Fréchet distances (then its Gaussian and
factor are refitted each replicate; its balls stay fixed for precision,
density and coverage, which would otherwise collapse like recall's).
A split-half FID (two disjoint random halves of the samples) is a floor: what
FID reads between two draws of the same model.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from mimflow_core.errors import MIMFlowError

from .frechet import frechet_distance, gaussian_stats, psd_factor


@dataclass(frozen=True)
class Bootstrap:
    """What --bootstrap asks: ``replicates`` resamples of the samples, and with ``reference`` (from
    --bootstrap-reference) of the reference too, for the Fréchet distances."""

    replicates: int
    reference: bool = False


def _weighted_stats(x: torch.Tensor, weights: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the rows of ``x`` drawn ``weights`` times each (no copy of the drawn rows)."""
    w = torch.from_numpy(weights.astype(np.float64))
    n = w.sum()
    mu = w @ x / n
    centred = x - mu
    return mu, (centred * w[:, None]).T @ centred / (n - 1)


def _reference_side(mu: np.ndarray | torch.Tensor, sigma: np.ndarray | torch.Tensor
                    ) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(mean, trace, PSD factor) of the reference Gaussian: all a replicate needs of that side."""
    sigma = np.asarray(sigma, np.float64)
    sigma = (sigma + sigma.T) / 2
    return torch.from_numpy(np.asarray(mu, np.float64)), float(np.trace(sigma)), psd_factor(sigma)


def _fd_to(mu: torch.Tensor, sigma: torch.Tensor, mu_ref: torch.Tensor, trace_ref: float,
           factor: torch.Tensor) -> float:
    eig = torch.linalg.eigvalsh(factor.T @ sigma @ factor)
    eig = eig[eig > eig.max().clamp_min(0) * len(eig) * torch.finfo(torch.float64).eps]
    diff = mu - mu_ref
    return float(diff @ diff + sigma.trace() + trace_ref - 2 * eig.sqrt().sum())


NOT_BOOTSTRAPPED = {
    "recall": "the samples' own k-NN balls collapse to radius 0 when a resample draws a point k + 1 times",
    "kid": "its unbiased estimate would count a point drawn twice as two distinct points",
}


def resample_counts(n: int, replicates: int, seed: int | tuple[int, ...] = 0) -> Iterator[np.ndarray]:
    """How often each of ``n`` samples is drawn in each of ``replicates`` seeded resamples with replacement (the
    same draws for every metric of one seed, so their intervals come from the same resamples)."""
    if replicates < 1:
        raise MIMFlowError(f"--bootstrap {replicates}: need at least 1 replicate")
    rng = np.random.default_rng(seed)
    for _ in range(replicates):
        yield np.bincount(rng.integers(0, n, n), minlength=n)


def summary(values: np.ndarray, seed: int) -> dict:
    """Mean, std and 95 % percentile interval of one metric's replicates."""
    low, high = np.percentile(values, [2.5, 97.5])
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "ci95": [float(low), float(high)], "replicates": len(values), "seed": seed}


def bootstrap_fid(samples: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, replicates: int,
                  seed: int = 0, reference: np.ndarray | None = None) -> dict:
    """Mean, std and 95 % percentile interval of FID over ``replicates`` resamples of ``samples``; with
    ``reference`` (its features) each replicate also resamples it (its own seeded stream) and refits its Gaussian
    in place of ``mu_ref``/``sigma_ref``, at one more factorisation a replicate."""
    x = torch.from_numpy(np.asarray(samples, np.float64))
    if reference is None:
        references = itertools.repeat(_reference_side(mu_ref, sigma_ref))
    else:
        y = torch.from_numpy(np.asarray(reference, np.float64))
        references = (_reference_side(*(t.numpy() for t in _weighted_stats(y, w)))
                      for w in resample_counts(len(y), replicates, (seed, 1)))
    values = np.array([_fd_to(*_weighted_stats(x, w), *side)
                       for w, side in zip(resample_counts(len(x), replicates, seed), references)])
    return {**summary(values, seed), "reference_resampled": reference is not None}


def bootstrap_neighbours(inside_reference: np.ndarray, ball_counts: np.ndarray, pairs: np.ndarray, num_reference: int,
                         k: int, replicates: int, seed: int = 0) -> dict:
    """Precision, density and coverage over resamples of the samples, from per-sample tests made once.

    The reference's balls never change, so a replicate is a reweighting:
    precision = share of drawn samples inside a reference ball
    (``inside_reference``), density = their mean ``ball_counts`` / k, coverage
    = share of references whose ball holds a drawn sample (``pairs``: (sample,
    reference) rows of every hold). Exact, and O(samples + pairs) a replicate.
    """
    inside = np.asarray(inside_reference, np.float64)
    counts = np.asarray(ball_counts, np.float64)
    values = {"precision": [], "density": [], "coverage": []}
    for w in resample_counts(len(inside), replicates, seed):
        values["precision"].append(w @ inside / len(w))
        values["density"].append(w @ counts / (k * len(w)))
        held = np.bincount(pairs[1], weights=w[pairs[0]], minlength=num_reference)
        values["coverage"].append((held > 0).mean())
    return {name: summary(np.array(v), seed) for name, v in values.items()}
def split_half_fid(samples: np.ndarray, seed: int = 0) -> float:
    """FID between two disjoint random halves of ``samples``."""
    order = np.random.default_rng(seed).permutation(len(samples))
    half = len(samples) // 2
    return frechet_distance(*gaussian_stats(samples[order[:half]]), *gaussian_stats(samples[order[half:2 * half]]))
