"""Matrices with a known spectrum, for testing and benchmarking the estimators.

- :func:`prescribed_spectrum`: U diag(s) Vᵀ with random orthogonal U, V.
- :func:`kahan_matrix`: Kahan's upper-triangular matrix, transposed to lower
  (an autoregressive block is lower triangular in token order). Its smallest
  singular value lies orders of magnitude below its smallest diagonal entry,
  so an estimator that reads σmin off the diagonal (or that confuses a
  triangular solve with an eigen-solve) is caught.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def random_orthogonal(n: int, generator: torch.Generator) -> Tensor:
    """Haar-distributed orthogonal matrix (QR of a Gaussian with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def prescribed_spectrum(singular_values: Tensor, seed: int = 0) -> Tensor:
    """A dense matrix whose singular values are exactly ``singular_values``."""
    g = torch.Generator().manual_seed(seed)
    n = singular_values.numel()
    return random_orthogonal(n, g) @ torch.diag(singular_values.to(torch.float64)) @ random_orthogonal(n, g).T


def kahan_matrix(n: int, theta: float = 1.2, perturbation: float = 25.0) -> Tensor:
    """Transposed Kahan matrix: Lᵢᵢ = sⁱ(1 + pert·ε·(n−i)), Lᵢⱼ = −c·sʲ for j < i (s = sin θ, c = cos θ).

    The small diagonal perturbation is the one of MATLAB's ``gallery('kahan')``.
    """
    s, c = math.sin(theta), math.cos(theta)
    i = torch.arange(n, dtype=torch.float64)
    scale = s**i
    unit_lower = torch.eye(n, dtype=torch.float64) + torch.tril(torch.full((n, n), -c, dtype=torch.float64), -1)
    m = unit_lower * scale[None, :]
    return m + torch.diag(perturbation * torch.finfo(torch.float64).eps * (n - i) * scale)


def randomise_outputs(flow, std: float = 0.05, generator: torch.Generator | None = None) -> None:
    """Give every block's zero-initialised output projection N(0, std²) weights and biases, in place.

    A new flow is the identity (κ = 1); random output projections give it
    data-dependent shifts and scales, and ``std`` sets how ill-conditioned it
    gets (for the small test flows, std 0.05–0.1 gives κ ≈ 10–1000).
    """
    with torch.no_grad():
        for block in flow.blocks:
            for p in (block.proj_out.weight, block.proj_out.bias):
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)


def perturbed_flow(config, std: float, seed: int = 0):
    """A float64, eval-mode LatentFlow with randomised output projections (see :func:`randomise_outputs`)."""
    from mimflow_core.flow import LatentFlow

    torch.manual_seed(seed)
    flow = LatentFlow(config).double().eval().requires_grad_(False)
    randomise_outputs(flow, std, torch.Generator().manual_seed(seed))
    return flow
