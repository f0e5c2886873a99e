"""Batched Krylov methods for B independent symmetric positive definite problems.

The Jacobian of the flow over a batch is block-diagonal, so row ``i`` of a
``(B, n)`` batch of vectors is its own problem: every routine keeps per-sample
scalars and a per-sample stopping test, and a sample leaves the batch as soon
as it has converged, so later operator calls run only on the samples still
working. Operators are callables ``apply(v, idx)`` that map the rows ``v``
(shape ``(b, n)``) of the samples ``idx`` (shape ``(b,)``) to ``A v``.
Everything is float64: at condition numbers in the thousands, ``JᵀJ`` in
float32 has no correct digits left.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Apply = Callable[[Tensor, Tensor], Tensor]
# Called with how many samples just finished (for a progress bar that moves within a batch).
Progress = Callable[[int], None]


@dataclass
class Eigenpair:
    """Per-sample estimate of one extreme eigenpair of an SPD operator ``A``."""

    value: Tensor  # (B,) Rayleigh/Ritz value θ
    vector: Tensor  # (B, n) unit vector x
    residual: Tensor  # (B,) ‖A x − θ x‖ / θ: some eigenvalue lies within residual·θ of θ
    iterations: Tensor  # (B,) outer iterations spent
    converged: Tensor  # (B,) bool


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def _empty_result(v0: Tensor) -> Eigenpair:
    B = v0.shape[0]
    return Eigenpair(
        value=v0.new_full((B,), float("nan")),
        vector=torch.zeros_like(v0),
        residual=v0.new_full((B,), float("inf")),
        iterations=torch.zeros(B, dtype=torch.long, device=v0.device),
        converged=torch.zeros(B, dtype=torch.bool, device=v0.device),
    )


def _lanczos_step(apply: Apply, V: Tensor, active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One Lanczos step from the basis ``V`` (b, j+1, n): the new direction w ⟂ V, α_j and β_j = ‖w‖.

    Full reorthogonalisation (classical Gram–Schmidt, applied twice: "twice is
    enough", Kahan/Parlett) keeps the basis orthonormal to working precision.
    """
    w = apply(V[:, -1], active)
    a = torch.einsum("bn,bn->b", w, V[:, -1])
    for _ in range(2):
        w = w - torch.einsum("bkn,bk->bn", V, torch.einsum("bkn,bn->bk", V, w))
    return w, a, w.norm(dim=-1)


def lanczos_top(apply: Apply, v0: Tensor, tol: float = 1e-6, max_iter: int = 300,
                on_finished: Progress | None = None) -> Eigenpair:
    """Largest eigenpair by Lanczos with full reorthogonalisation, one problem per row.

    Full reorthogonalisation keeps the basis orthonormal to working precision,
    so no ghost copies of converged eigenvalues appear and the residual bound ``β_j |s_j|`` of the top Ritz
    pair is the true residual ‖A x − θ x‖. A sample stops when that residual
    falls below ``tol·θ`` (or the Krylov space becomes invariant); unlike power
    iteration, convergence does not stall when the top two eigenvalues are close.
    """
    B, n = v0.shape
    out = _empty_result(v0)
    steps = min(max_iter, n)
    basis = [_unit(v0)]
    alpha = v0.new_zeros(B, steps)
    beta = v0.new_zeros(B, steps)
    active = torch.arange(B, device=v0.device)
    for j in range(steps):
        if active.numel() == 0:
            break
        V = torch.stack([q[active] for q in basis], dim=1)  # (b, j+1, n)
        w, a, b = _lanczos_step(apply, V, active)
        alpha[active, j] = a
        beta[active, j] = b
        T = torch.diag_embed(alpha[active, : j + 1])
        if j > 0:
            off = torch.diag_embed(beta[active, :j], offset=1)
            T = T + off + off.transpose(1, 2)
        evals, evecs = torch.linalg.eigh(T)
        theta, s = evals[:, -1], evecs[:, :, -1]
        rel = b * s[:, -1].abs() / theta.abs().clamp_min(torch.finfo(theta.dtype).tiny)
        invariant = b <= 64 * torch.finfo(b.dtype).eps * theta.abs()
        converged = (rel <= tol) | invariant
        finished = converged | (j + 1 == steps)
        if finished.any():
            done = active[finished]
            out.value[done] = theta[finished]
            out.vector[done] = _unit(torch.einsum("bkn,bk->bn", V[finished], s[finished]))
            out.residual[done] = torch.where(invariant[finished], torch.zeros_like(rel[finished]), rel[finished])
            out.iterations[done] = j + 1
            out.converged[done] = converged[finished]
            if on_finished is not None:
                on_finished(done.numel())
        nxt = torch.zeros_like(v0)
        nxt[active] = w / b.clamp_min(torch.finfo(b.dtype).tiny)[:, None]
        basis.append(nxt)
        active = active[~finished]
    return out


@dataclass
class Quadrature:
    """Per-row Gauss quadrature of the spectral measure μ_v = Σᵢ (uᵢᵀv)² δ(λᵢ) of A for a unit start v.

    vᵀ f(A) v ≈ Σ_k weights_k f(nodes_k); the rule with m nodes is exact for
    polynomials of degree < 2m. A row whose Krylov space became invariant
    after fewer steps has that many nodes; the rest are padding (node 1,
    weight 0), so sums over nodes need no mask.
    """

    nodes: Tensor  # (B, m) Ritz values θ_k, the eigenvalues of the Lanczos matrix T
    weights: Tensor  # (B, m) squared first components of T's eigenvectors; sum to 1 per row
    steps: Tensor  # (B,) Lanczos steps taken (nodes in use)


def lanczos_quadrature(apply: Apply, v0: Tensor, steps: int, on_finished: Progress | None = None) -> Quadrature:
    """``steps`` Lanczos steps per row from ``v0`` (no convergence test), kept as the Gauss rule of T.

    Stochastic Lanczos quadrature needs the whole tridiagonal T, not one
    converged Ritz pair, so a row stops early only when its Krylov space is
    invariant (β below rounding, then the rule is exact). Full
    reorthogonalisation costs O(m² n) per row, small beside m operator
    products at m ≲ 100, and keeps spurious copies of the extreme Ritz values
    from stealing weight from the interior of the measure.
    """
    B, n = v0.shape
    steps = min(steps, n)
    V = v0.new_zeros(B, steps + 1, n)
    V[:, 0] = _unit(v0)
    alpha, beta = v0.new_zeros(B, steps), v0.new_zeros(B, steps)
    length = torch.full((B,), steps, dtype=torch.long, device=v0.device)
    active = torch.arange(B, device=v0.device)
    for j in range(steps):
        if active.numel() == 0:
            break
        basis = V[:, : j + 1] if active.numel() == B else V[active, : j + 1]  # a view while no row has stopped
        w, a, b = _lanczos_step(apply, basis, active)
        alpha[active, j], beta[active, j] = a, b
        scale = alpha[active, : j + 1].abs().amax(-1)
        finished = (b <= 64 * torch.finfo(b.dtype).eps * scale) | (j + 1 == steps)
        length[active[finished]] = j + 1
        if on_finished is not None and finished.any():
            on_finished(int(finished.sum()))
        V[active, j + 1] = w / b.clamp_min(torch.finfo(b.dtype).tiny)[:, None]
        active = active[~finished]
    nodes, weights = v0.new_ones(B, steps), v0.new_zeros(B, steps)
    for m in length.unique().tolist():
        rows = torch.nonzero(length == m).flatten()
        off = torch.diag_embed(beta[rows, : m - 1], offset=1)
        theta, s = torch.linalg.eigh(torch.diag_embed(alpha[rows, :m]) + off + off.mT)
        nodes[rows, :m], weights[rows, :m] = theta, s[:, 0] ** 2
    return Quadrature(nodes=nodes, weights=weights, steps=length)


def conjugate_gradient(
    apply: Apply, rhs: Tensor, idx: Tensor, x0: Tensor | None = None, tol: float = 1e-6,
    max_iter: int | Tensor = 1000,
) -> tuple[Tensor, Tensor, Tensor]:
    """Solve ``A x = rhs`` for each row by conjugate gradients.

    Stops a row when ‖r‖ ≤ tol·‖r₀‖, the residual of the start ``x0`` (‖rhs‖
    without one): a warm-started solve then always gains the factor ``tol``,
    however good its start already is. ``max_iter`` may differ per row
    (a tensor). Returns ``(x, iterations, converged)``.
    """
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - apply(x, idx) if x0 is not None else rhs.clone()
    p = r.clone()
    rr = torch.einsum("bn,bn->b", r, r)
    target = tol**2 * rr
    iters = torch.zeros(rhs.shape[0], dtype=torch.long, device=rhs.device)
    cap = torch.as_tensor(max_iter, device=rhs.device).expand(rhs.shape[0])
    running = torch.nonzero((rr > 0) & (cap > 0)).flatten()
    while True:
        if running.numel() == 0:
            break
        Ap = apply(p[running], idx[running])
        pAp = torch.einsum("bn,bn->b", p[running], Ap)
        step = rr[running] / pAp
        x[running] += step[:, None] * p[running]
        r[running] -= step[:, None] * Ap
        rr_new = torch.einsum("bn,bn->b", r[running], r[running])
        p[running] = r[running] + (rr_new / rr[running])[:, None] * p[running]
        rr[running] = rr_new
        iters[running] += 1
        running = running[(rr_new > target[running]) & (iters[running] < cap[running])]
    return x, iters, rr <= target


def _rayleigh(apply: Apply, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """θ = xᵀAx for unit rows x, and the relative residual ‖Ax − θx‖/θ."""
    Ax = apply(x, idx)
    theta = torch.einsum("bn,bn->b", x, Ax)
    rel = (Ax - theta[:, None] * x).norm(dim=-1) / theta.abs().clamp_min(torch.finfo(x.dtype).tiny)
    return theta, rel


def _finish(out: Eigenpair, done: Tensor, theta: Tensor, v: Tensor, rel: Tensor, k: int, converged: Tensor,
            on_finished: Progress | None) -> None:
    """Record the rows ``done`` that stop at outer iteration ``k`` (and say how many stopped)."""
    out.value[done], out.vector[done] = theta, v[done]
    out.residual[done], out.iterations[done], out.converged[done] = rel, k, converged
    if on_finished is not None and done.numel():
        on_finished(done.numel())


def power_iteration(apply: Apply, v0: Tensor, tol: float = 1e-6, max_iter: int = 1000,
                    on_finished: Progress | None = None) -> Eigenpair:
    """Largest eigenpair by power iteration (the paper's Eq. 9 on ``A = JᵀJ``).

    A row stops when both the relative change of θ and the relative residual
    ‖Av − θv‖/θ are ≤ tol. One ``apply`` per iteration.
    """
    out = _empty_result(v0)
    v = _unit(v0)
    theta_prev = v0.new_full((v0.shape[0],), float("inf"))
    active = torch.arange(v0.shape[0], device=v0.device)
    for k in range(1, max_iter + 1):
        Av = apply(v[active], active)
        theta = torch.einsum("bn,bn->b", v[active], Av)
        rel = (Av - theta[:, None] * v[active]).norm(dim=-1) / theta.abs().clamp_min(torch.finfo(v.dtype).tiny)
        change = (theta - theta_prev[active]).abs() / theta.abs()
        converged = (rel <= tol) & (change <= tol)
        finished = converged | (k == max_iter)
        _finish(out, active[finished], theta[finished], v, rel[finished], k, converged[finished], on_finished)
        theta_prev[active] = theta
        v[active] = _unit(Av)
        active = active[~finished]
        if active.numel() == 0:
            break
    return out


def inverse_iteration(
    apply: Apply,
    v0: Tensor,
    shift: Tensor,
    tol: float = 1e-6,
    max_iter: int = 200,
    cg_tol: float = 1e-2,
    cg_max_iter: int = 1000,
    budget: Callable[[Tensor], Tensor] | None = None,
    on_finished: Progress | None = None,
) -> Eigenpair:
    """Smallest eigenpair by inexact shifted inverse iteration (the paper's Eqs. 10–11).

    Each outer step solves ``(A + αI) w = v`` by CG (warm-started at ``v/(θ+α)``,
    which is the exact solution once ``v`` is an eigenvector) and normalises
    ``w``. θ is the Rayleigh quotient of ``A`` itself, so ``θ = λ_min(A+αI) − α``
    as in Eq. 11. A row stops when the relative change of θ and the relative
    residual ‖Av − θv‖/θ are ≤ tol, after ``max_iter`` outer steps, or when
    its budget is spent: ``budget(idx)`` (if given) returns how many more
    applications of A each row may make, and caps its CG solve accordingly.
    """
    out = _empty_result(v0)
    v = _unit(v0)
    shifted = lambda x, idx: apply(x, idx) + shift[idx, None] * x  # noqa: E731
    active = torch.arange(v0.shape[0], device=v0.device)
    theta_prev, _ = _rayleigh(apply, v, active)
    for k in range(1, max_iter + 1):
        guess = v[active] / (theta_prev[active] + shift[active])[:, None]
        cg_cap = cg_max_iter if budget is None else (budget(active) - 1).clamp(0, cg_max_iter)  # -1: Rayleigh
        w, _, _ = conjugate_gradient(shifted, v[active], active, x0=guess, tol=cg_tol, max_iter=cg_cap)
        v[active] = _unit(w)
        theta, rel = _rayleigh(apply, v[active], active)
        change = (theta - theta_prev[active]).abs() / theta.abs()
        converged = (rel <= tol) & (change <= tol)
        spent = budget(active) <= 0 if budget is not None else torch.zeros_like(converged)
        finished = converged | spent | (k == max_iter)
        _finish(out, active[finished], theta[finished], v, rel[finished], k, converged[finished], on_finished)
        theta_prev[active] = theta
        active = active[~finished]
        if active.numel() == 0:
            break
    return out
