"""Where in the flow the conditioning is lost: σmax, σmin, κ and log|det| of every block's own Jacobian.

J = J_B ⋯ J_1, where J_b is block b's Jacobian at the point x_b it sees (the
output of the blocks before it). Each J_b is triangular in its own token
order, so the ``fast`` route (Lanczos on J_bᵀJ_b and on J_b⁻ᵀJ_b⁻¹ with exact
inverse products) applies to it unchanged. Submultiplicativity gives two
certificates that need nothing but the estimates themselves:
Π σmin(J_b) ≤ σmin(J) and σmax(J) ≤ Π σmax(J_b); together they say
log κ(J) ≤ Σ log κ(J_b), and a block's share of that sum, log κ(J_b) / Σ log κ,
says which block loses the conditioning (the slack of the bound is the
conditioning lost *or recovered* between blocks, which no single block owns).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .certificates import certify
from .estimators import SpectrumEstimate, estimate_fast
from .operators import block_jacobians

BOUND_RTOL = 1e-6  # per block: each factor's estimate is within this of its own value, so the product bound slackens


def analyse_blocks(flow, z: Tensor, y: Tensor, seeds: Tensor, whole: SpectrumEstimate, num_blocks: int | None = None,
                   tol: float = 1e-6, progress: Callable[[float], None] | None = None) -> list[dict]:
    """Per-sample ``per_block`` records for latents z (B, K, D), checked against the whole flow's ``whole``.

    Samples stay batched and keep their own seeds within every block, so a
    batch gives the numbers of one-at-a-time runs.
    """
    ops = block_jacobians(flow, z, y, num_blocks)
    share = None if progress is None else (lambda n: progress(n / len(ops)))
    ests = [estimate_fast(op, seeds, tol=tol, progress=share) for op in ops]
    certs = [certify(op, est) for op, est in zip(ops, ests)]
    log_kappa = torch.stack([est.kappa.log() for est in ests], 1)  # (B, blocks)
    slack = 1 + BOUND_RTOL * len(ops)
    prod_min = torch.stack([est.sigma_min for est in ests], 1).prod(1)
    prod_max = torch.stack([est.sigma_max for est in ests], 1).prod(1)
    bounds = {
        "prod_sigma_min": prod_min, "prod_sigma_max": prod_max,
        "check_prod_sigma_min_le_sigma_min": prod_min <= whole.sigma_min * slack,
        "check_sigma_max_le_prod_sigma_max": whole.sigma_max <= prod_max * slack,
        "sum_log10_kappa": log_kappa.sum(1) / torch.log(torch.tensor(10.0, dtype=log_kappa.dtype)),
    }
    shares = log_kappa / log_kappa.sum(1, keepdim=True)
    records = []
    for i in range(z.shape[0]):
        blocks = [{
            "sigma_max": est.sigma_max[i].item(), "sigma_min": est.sigma_min[i].item(),
            "kappa": est.kappa[i].item(), "log10_kappa": est.kappa[i].log10().item(),
            "logdet": op.logabsdet()[i].item(), "share_log_kappa": shares[i, b].item(),
            "products": int(est.products["total"][i]),
            "ok": bool(cert["ok"][i]),
        } for b, (op, est, cert) in enumerate(zip(ops, ests, certs))]
        record = {k: v[i].item() for k, v in bounds.items() if not k.startswith("check_")}
        record["checks"] = {k.removeprefix("check_"): bool(v[i]) for k, v in bounds.items() if k.startswith("check_")}
        record["ok"] = all(record["checks"].values()) and all(b["ok"] for b in blocks)
        records.append({"blocks": blocks, **record})
    return records
