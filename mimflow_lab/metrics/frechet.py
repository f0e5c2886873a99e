"""Fréchet distance between Gaussians fitted to Inception features (FID, sFID).

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).

ADM (and pytorch-fid, clean-fid) take ``scipy.linalg.sqrtm(S1 @ S2)``: a
complex Schur decomposition of a non-symmetric matrix, slow, and its
``disp=`` argument is gone in scipy 1.18. Only the trace is needed, and
tr sqrt(S1 S2) is the sum of square roots of the eigenvalues of S1 S2, which
are those of the symmetric PSD matrix A^T S2 A for any factor S1 = A A^T.
So: a Cholesky factor (pivoted, rank-revealing Cholesky when the covariance
is singular, so few samples give a small factor), one symmetric eigenvalue
problem, all in float64 (torch's LAPACK, MKL on x86, is several times faster
than numpy's here); eigenvalues at rounding level count as the zeros they are.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.linalg import lapack

from mimflow_core.errors import MIMFlowError


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and ``np.cov(rowvar=False)`` covariance in float64, as ADM computes them."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise MIMFlowError(f"features: need (N >= 2, dim) to fit a Gaussian, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise MIMFlowError("features: contain NaN or Inf (broken images or an overflowing network)")
    if len(features) <= features.shape[1]:
        warnings.warn(
            f"only {len(features)} samples for {features.shape[1]}-d features: the covariance is rank-deficient "
            "and the Fréchet distance is unreliable (ADM uses 50000 samples)",
            stacklevel=2,
        )
    return features.mean(axis=0), np.cov(features, rowvar=False)


def psd_factor(sigma: np.ndarray) -> torch.Tensor:
    """F (d x r) with F F^T = sigma, r = numerical rank.

    Cholesky when sigma is positive definite; otherwise pivoted Cholesky
    (LAPACK ``pstrf``, rank tolerance d * eps * max(diag)), which costs d^2 r:
    cheap for the rank-deficient covariances of few samples.
    """
    factor, info = torch.linalg.cholesky_ex(torch.from_numpy(sigma))
    if info == 0:
        return factor
    factor, pivots, rank, info = lapack.dpstrf(sigma, lower=1)
    if info < 0:
        raise ValueError(f"dpstrf: illegal argument {-info}")
    permuted = np.empty((len(sigma), rank))
    permuted[pivots - 1] = np.tril(factor)[:, :rank]
    return torch.from_numpy(permuted)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(sigma1 @ sigma2) for symmetric PSD matrices, through the factor of lower rank."""
    factor, other = psd_factor(sigma1), sigma2
    if factor.shape[1] < len(sigma1):
        factor2 = psd_factor(sigma2)
        if factor2.shape[1] < factor.shape[1]:
            factor, other = factor2, sigma1
    eigenvalues = torch.linalg.eigvalsh(factor.T @ torch.from_numpy(other) @ factor).numpy()
    # Zero eigenvalues come out as +-1e-16 * max; their square roots (~1e-8) would bias the sum.
    significant = eigenvalues > eigenvalues.max(initial=0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return float(np.sqrt(eigenvalues[significant]).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise MIMFlowError(f"statistics: shapes differ (mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                           f"{sigma2.shape})")
    for name, x in (("mu", mu1), ("sigma", sigma1), ("mu", mu2), ("sigma", sigma2)):
        if not np.isfinite(x).all():
            raise MIMFlowError(f"statistics: {name} contains NaN or Inf")
    diff = mu1 - mu2
    # Symmetrise: np.cov is symmetric only up to rounding, and eigh reads one triangle.
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))
