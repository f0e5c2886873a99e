"""σmax, σmin and κ of B Jacobians by three routes: ``paper``, ``fast`` and ``exact``.

- ``paper`` (Appendix B): power iteration on JᵀJ for σmax (Eq. 9) and inexact
  shifted inverse iteration on JᵀJ + αI with conjugate gradients for σmin
  (Eqs. 10–11). CG needs O(κ) products per solve, so this route gets slow —
  or runs out of budget — exactly on the ill-conditioned samples Figure 5 is about.
- ``fast``: Lanczos with full reorthogonalisation on JᵀJ for σmax, and on
  J⁻ᵀJ⁻¹ for σmin = 1/σmax(J⁻¹), using the exact inverse products that the
  flow's triangular structure provides (no inner solver, no shift).
- ``exact``: the dense Jacobian and ``torch.linalg.svdvals`` (the reference).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .krylov import _unit, inverse_iteration, lanczos_top, power_iteration
from .operators import JacobianOperator

METHODS = ("paper", "fast", "exact")


@dataclass
class SpectrumEstimate:
    """Per-sample extreme singular values of B Jacobians and how they were obtained."""

    sigma_max: Tensor  # (B,)
    sigma_min: Tensor  # (B,)
    converged_max: Tensor  # (B,) bool
    converged_min: Tensor  # (B,) bool
    products: dict[str, Tensor]  # per-sample counts of J, Jᵀ, J⁻¹, J⁻ᵀ products (and "total")
    seconds: float  # wall time for the whole batch
    v_max: Tensor | None = None  # (B, D) unit vectors with ‖J v_max‖ ≈ σmax
    v_min: Tensor | None = None  # (B, D) unit vectors with ‖J v_min‖ ≈ σmin
    sum_log_sigma: Tensor | None = None  # (B,) Σ log σᵢ, exact route only
    extra: dict[str, Tensor] = field(default_factory=dict)

    @property
    def kappa(self) -> Tensor:
        return self.sigma_max / self.sigma_min


def start_vectors(seeds: Tensor, dim: int, device: torch.device | str = "cpu") -> Tensor:
    """One Gaussian start vector per sample, drawn from that sample's own seed.

    Seeding per sample (not per batch) makes a batch give the same numbers as
    the same samples run one at a time.
    """
    rows = [torch.randn(dim, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
    return torch.stack(rows).to(device)


def estimate(op: JacobianOperator, method: str, seeds: Tensor, progress: Callable[[float], None] | None = None,
             **options) -> SpectrumEstimate:
    """Run one of :data:`METHODS` on all samples of ``op``.

    ``progress(n)`` is told, while the batch runs, that ``n`` more samples are
    done (half a sample per converged extreme singular value), so a bar moves
    within a batch that may take minutes.
    """
    routes = {"paper": estimate_paper, "fast": estimate_fast, "exact": estimate_exact}
    return routes[method](op, seeds, progress=progress, **options)


def _halves(progress: Callable[[float], None] | None) -> Callable[[int], None] | None:
    """A finished-rows callback that counts each row as half a sample (σmax and σmin are two solves)."""
    return None if progress is None else (lambda rows: progress(rows / 2))


def estimate_fast(
    op: JacobianOperator, seeds: Tensor, tol: float = 1e-6, max_iter: int = 300,
    progress: Callable[[float], None] | None = None,
) -> SpectrumEstimate:
    """Lanczos on JᵀJ (σmax) and on J⁻ᵀJ⁻¹ (σmin = 1/σmax(J⁻¹)).

    ``tol`` bounds the relative residual of the Ritz pair; since Ritz values
    converge quadratically in the residual, the singular values are usually
    far more accurate than ``tol``.
    """
    t0 = time.perf_counter()
    half = _halves(progress)
    top = lanczos_top(op.normal, start_vectors(seeds, op.dim, op.device), tol=tol, max_iter=max_iter,
                      on_finished=half)
    inv = lanczos_top(op.inverse_normal, start_vectors(seeds + 1, op.dim, op.device), tol=tol, max_iter=max_iter,
                      on_finished=half)
    products = op.products()
    seconds = time.perf_counter() - t0
    everyone = torch.arange(op.batch, device=op.device)
    # The right singular vector of J for σmin is J⁻¹ applied to the top one of J⁻¹.
    v_min = _unit(op.solve(inv.vector, everyone))
    return SpectrumEstimate(
        sigma_max=top.value.sqrt(),
        sigma_min=inv.value.rsqrt(),
        converged_max=top.converged,
        converged_min=inv.converged,
        products=products,
        seconds=seconds,
        v_max=top.vector,
        v_min=v_min,
        extra={"iterations_max": top.iterations, "iterations_min": inv.iterations},
    )


def estimate_paper(
    op: JacobianOperator,
    seeds: Tensor,
    tol: float = 1e-6,
    max_iter: int = 5000,
    cg_tol: float = 1e-2,
    max_products: int = 20000,
    shift: float = 1e-12,
    progress: Callable[[float], None] | None = None,
) -> SpectrumEstimate:
    """Power iteration (Eq. 9) and inexact shifted inverse iteration with CG (Eqs. 10–11).

    The shift is α = ``shift``·σmax², a Tikhonov term that keeps A = JᵀJ + αI
    definite without moving σmin at the accuracy we report. A sample stops
    when its products reach ``max_products`` and is reported as not converged.
    """
    t0 = time.perf_counter()
    half = _halves(progress)
    top = power_iteration(op.normal, start_vectors(seeds, op.dim, op.device), tol=tol, max_iter=max_iter,
                          on_finished=half)
    alpha = shift * top.value
    left = lambda idx: (max_products - op.products()["total"][idx]) // 2  # noqa: E731 (JᵀJ = 2 products)
    bottom = inverse_iteration(
        op.normal, start_vectors(seeds + 1, op.dim, op.device), alpha,
        tol=tol, max_iter=max_iter, cg_tol=cg_tol, budget=left, on_finished=half,
    )
    return SpectrumEstimate(
        sigma_max=top.value.sqrt(),
        sigma_min=bottom.value.clamp_min(0).sqrt(),
        converged_max=top.converged,
        converged_min=bottom.converged,
        products=op.products(),
        seconds=time.perf_counter() - t0,
        v_max=top.vector,
        v_min=bottom.vector,
        extra={"iterations_max": top.iterations, "iterations_min": bottom.iterations},
    )


def estimate_exact(op: JacobianOperator, seeds: Tensor | None = None,
                   progress: Callable[[float], None] | None = None) -> SpectrumEstimate:
    """Dense Jacobian (``op.dense``) and all its singular values, one sample at a time."""
    t0 = time.perf_counter()

    def spectrum(i: int) -> Tensor:
        values = torch.linalg.svdvals(op.dense(i))
        if progress is not None:
            progress(1)
        return values

    spectra = torch.stack([spectrum(i) for i in range(op.batch)])
    products = op.products()
    products["JT"] = products["JT"] + op.dim  # building J row by row costs D VJPs (or D JVPs)
    products["total"] = products["total"] + op.dim
    everyone = torch.ones(op.batch, dtype=torch.bool)
    return SpectrumEstimate(
        sigma_max=spectra[:, 0],
        sigma_min=spectra[:, -1],
        converged_max=everyone,
        converged_min=everyone.clone(),
        products=products,
        seconds=time.perf_counter() - t0,
        sum_log_sigma=spectra.log().sum(-1),
    )
