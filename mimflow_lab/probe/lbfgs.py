"""Batched L-BFGS: many small smooth problems minimised together, each with its own history and stop.

Written for the probe's weight-decay sweep, where dozens of tiny convex fits
would otherwise run one after another; nothing here knows about probes.
"""
from __future__ import annotations

from typing import Callable

import torch

# objective(theta_rows (a, P), rows (a,)) -> (losses (a,), gradients (a, P)) of the problems ``rows``
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def batched_lbfgs(objective: Objective, theta: torch.Tensor, *, max_iter: int = 300, tol: float = 1e-5,
                  history: int = 10, ftol: float = 1e-10) -> torch.Tensor:
    """Minimise G independent smooth functions at once; ``theta`` is (G, P), one row per problem.

    ``objective(theta_rows, rows)`` returns the losses (a,) and gradients
    (a, P) of problems ``rows`` at ``theta_rows``. Each problem has its own
    L-BFGS history (two-loop recursion), its own step length (weak Wolfe line
    search, see :func:`_wolfe_steps`) and its own stopping test (largest
    gradient entry <= ``tol``, or relative decrease <= ``ftol``); a problem
    that stops leaves the batch, so late iterations only pay for the slow ones.
    """
    out = theta.clone()
    rows = torch.arange(theta.shape[0], device=theta.device)  # problems still in the batch
    theta = out.clone()
    loss, grad = objective(theta, rows)
    # the history in theta's dtype (torch.zeros would make it float32 beside a float64 theta)
    S = theta.new_zeros(history, *theta.shape)  # curvature pairs, newest at it % history
    Y = torch.zeros_like(S)
    rho = theta.new_zeros(history, len(rows))   # 0 = empty or rejected pair
    gamma = theta.new_zeros(len(rows))          # initial inverse-Hessian scale; 0 = none yet
    keep = grad.abs().amax(1) > tol
    for it in range(max_iter + 1):
        if not keep.all():  # drop finished problems from every state tensor
            out[rows[~keep]] = theta[~keep]
            rows, theta, loss, grad = rows[keep], theta[keep], loss[keep], grad[keep]
            S, Y, rho, gamma = S[:, keep], Y[:, keep], rho[:, keep], gamma[keep]
        if len(rows) == 0 or it == max_iter:
            break
        q, alphas = grad.clone(), []
        for j in [(it - 1 - k) % history for k in range(min(it, history))]:
            alpha = rho[j] * (S[j] * q).sum(1)
            q -= alpha[:, None] * Y[j]
            alphas.append((j, alpha))
        first_step = torch.clamp(1.0 / grad.abs().sum(1), max=1.0)
        r = torch.where(gamma == 0, first_step, gamma)[:, None] * q
        for j, alpha in reversed(alphas):
            r += S[j] * (alpha - rho[j] * (Y[j] * r).sum(1))[:, None]
        d = -r
        slope = (grad * d).sum(1)
        uphill = slope >= 0  # a broken quasi-Newton direction: fall back to steepest descent
        d[uphill], slope[uphill] = -grad[uphill], -(grad[uphill] ** 2).sum(1)
        step, new_loss, new_grad = _wolfe_steps(objective, theta, d, loss, slope, rows)
        s, yv = step[:, None] * d, new_grad - grad
        sy = (s * yv).sum(1)
        good = sy > 1e-10
        S[it % history], Y[it % history] = s, yv
        rho[it % history] = torch.where(good, 1.0 / sy.clamp(min=1e-10), torch.zeros_like(sy))
        gamma = torch.where(good, sy / (yv * yv).sum(1).clamp(min=1e-20), gamma)
        stalled = loss - new_loss <= ftol * torch.maximum(loss.abs(), new_loss.abs()).clamp(min=1.0)
        theta, loss, grad = theta + s, new_loss, new_grad
        keep = (grad.abs().amax(1) > tol) & ~stalled
    out[rows] = theta
    return out


def _wolfe_steps(objective: Objective, theta: torch.Tensor, d: torch.Tensor, loss: torch.Tensor,
                 slope: torch.Tensor, rows: torch.Tensor, c1: float = 1e-4, c2: float = 0.9, max_evals: int = 30):
    """Per-problem step lengths t meeting the weak Wolfe conditions (bisection / doubling, Lewis & Overton):
    sufficient decrease f(x + t d) <= f(x) + c1 t g.d, and curvature g(x + t d).d >= c2 g.d, which keeps
    every curvature pair s.y positive and lets a step grow beyond 1 where the quadratic model is too timid."""
    step = torch.ones_like(loss)
    low, high = torch.zeros_like(loss), torch.full_like(loss, float("inf"))
    new_loss, new_grad = torch.empty_like(loss), torch.empty_like(theta)
    todo = torch.arange(len(loss), device=loss.device)  # problems whose step is not settled yet
    for evals in range(1, max_evals + 1):
        t = step[todo]
        f, g = objective(theta[todo] + t[:, None] * d[todo], rows[todo])  # only the unsettled ones pay
        new_loss[todo], new_grad[todo] = f, g
        too_long = f > loss[todo] + c1 * t * slope[todo]
        too_short = ~too_long & ((g * d[todo]).sum(1) < c2 * slope[todo])
        bad = too_long | too_short
        if not bad.any() or evals == max_evals:  # out of evaluations: keep the last evaluated step
            break
        high[todo] = torch.where(too_long, t, high[todo])
        low[todo] = torch.where(too_short, t, low[todo])
        todo = todo[bad]
        step[todo] = torch.where(torch.isinf(high[todo]), 2.0 * low[todo], 0.5 * (low[todo] + high[todo]))
    return step, new_loss, new_grad

