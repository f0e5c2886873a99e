"""Checks that an estimated σmax/σmin is consistent with facts that need no spectrum.

- log|det J| = Σ log σᵢ comes exactly from the flow (−Σ log-scales), so the
  geometric mean g = exp(log|det J| / D) of the singular values is known and
  σmin ≤ g ≤ σmax must hold.
- For any unit vector v, σmin ≤ ‖Jv‖ ≤ σmax: ‖J v_max‖ is a lower bound on
  σmax and ‖J v_min‖ an upper bound on σmin. An estimate that claims less
  (σmax) or more (σmin) than its own vector shows is wrong, e.g. an inverse
  product that is not really J⁻¹ or a σmin that is only a diagonal entry.
- For the exact route, Σ log σᵢ from the SVD must equal log|det J|.

A sample that fails any check is flagged and kept out of the summary.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .estimators import SpectrumEstimate
from .operators import JacobianOperator


def certify(
    op: JacobianOperator, est: SpectrumEstimate, rtol: float = 1e-6, det_atol: float = 1e-6
) -> dict[str, Tensor]:
    """Per-sample certificate values and boolean checks (``checks_passed`` ANDs them)."""
    everyone = torch.arange(op.batch, device=op.device)
    logdet = op.logabsdet().to(torch.float64)
    geomean = (logdet / op.dim).exp()
    out: dict[str, Tensor] = {
        "logdet_per_dim": logdet / op.dim,
        "check_sigma_min_le_geomean": est.sigma_min <= geomean * (1 + rtol),
        "check_geomean_le_sigma_max": geomean <= est.sigma_max * (1 + rtol),
    }
    if est.v_max is not None:
        out["norm_Jv_max"] = op.matvec(est.v_max, everyone).norm(dim=-1)
        out["check_sigma_max_ge_norm_Jv"] = est.sigma_max >= out["norm_Jv_max"] * (1 - rtol)
    if est.v_min is not None:
        out["norm_Jv_min"] = op.matvec(est.v_min, everyone).norm(dim=-1)
        out["check_sigma_min_le_norm_Jv"] = est.sigma_min <= out["norm_Jv_min"] * (1 + rtol)
    if est.sum_log_sigma is not None:
        out["check_sum_log_sigma_eq_logdet"] = (est.sum_log_sigma - logdet).abs() <= det_atol * op.dim
    checks = [v for k, v in out.items() if k.startswith("check_")]
    out["checks_passed"] = torch.stack(checks).all(0)
    out["ok"] = out["checks_passed"] & est.converged_max & est.converged_min & torch.isfinite(est.kappa)
    return out
