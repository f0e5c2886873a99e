"""The whole singular-value spectrum of B Jacobians: the density of log σᵢ by stochastic Lanczos quadrature.

For a probe v, m Lanczos steps on A = JᵀJ give a Gauss rule (θ_k, τ_k) for
the spectral measure Σᵢ (uᵢᵀv)² δ(σᵢ²); averaged over n_v probes it is an
unbiased estimate of the density of the σᵢ (Ubaru, Chen & Saad 2017), and
with f = ½ log it estimates ½ tr log(JᵀJ) = Σ log σᵢ = log|det J| — which the
flow knows exactly, so every density comes with a certificate: the trace
estimate must lie within 3 standard errors (over probes) of log|det J|.

Both ends. A Gauss rule on JᵀJ places its nodes where the eigenvalues of JᵀJ
are large in *absolute* terms: at κ ≈ 10³ the small σᵢ² are all within 10⁻⁶
of 0 relative to the top, so a band of small singular values is resolved by
very few nodes, and on a log axis it is blurred over decades. J⁻ᵀJ⁻¹ has
eigenvalues 1/σᵢ² and resolves that end as well as JᵀJ resolves the top,
with no inner solver, because the flow gives exact inverse products.
Measured on flows with D = 512
(32 tokens × 16; m = 40, 6 Rademacher probes, 3 latents each) against the
exact svdvals, W1 in log10 σ for JᵀJ alone / both ends merged: κ ≈ 60–140:
0.027–0.034 / 0.012–0.018; κ ≈ 2·10³–8·10³: 0.11–0.14 / 0.034–0.043;
κ ≈ 10⁵–5·10⁵ (softplus scales): 0.19–0.23 / 0.043–0.072. JᵀJ alone also
failed its own log|det J| certificate at κ ≳ 10³ (2.8–17 standard errors:
the quadrature bias of log near 0 dominates the probe noise); merged, all
nine were within 3.3. The inverse end costs more (the inverse is K
sequential token steps: 10× the wall time of the JᵀJ end on those flows),
but without it the small end — the one Figure 5 is about — is not resolved.
So ``ends="both"`` is the default: the lower part of the density (log σ
below the exact mean of log σ, log|det J|/D) comes from J⁻ᵀJ⁻¹, the upper
part from JᵀJ, per probe (both ends share it), each rescaled so that the
mass below the split is the two ends' average estimate of it.

Steps, probes, and the two ends' costs at large D. Measured at D = 8192
(128 tokens × 64, κ ≈ 380–650, 2 latents × 8 probes, m up to 100, W1 of
each prefix of the same Lanczos runs against exact svdvals): the error is
set by the step counts, not the probes — at m = 40 on both ends W1 is
0.044–0.050 decades with 2 probes and 0.046–0.052 with 8; at m = 60 on JᵀJ
and 40 on J⁻ᵀJ⁻¹, 0.029–0.035 with 2 probes (the benchmark reproduced
0.029 and 0.035); at 60/60, 0.026–0.028. Few probes cost the certificate,
not the density: its standard error is then estimated from a handful of
values (with 2 probes |error|/SE is Student-t with 1 degree of freedom,
beyond 3 about 20 % of the time: 5 of 32 unbiased latents failed), so keep
≥ 6 probes where the certificate matters. A J⁻ᵀJ⁻¹ step costs ≈ 3× a JᵀJ
step per row (67 vs 21 ms at 64 rows, 2 threads; the inverse is K
sequential token steps and its recorded graph holds the growing KV
caches), so ``inverse_steps`` can be set below ``steps``; too few (20)
bias the trace by ≈ 2 % of log|det J|, which 8 probes' certificate flags.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .krylov import lanczos_quadrature
from .operators import JacobianOperator

PROBES = ("rademacher", "gaussian")
# fixed histogram bins in log10 σ (0.1 decades from 10⁻¹⁰ to 10⁵), the same for every sample and model
BIN_EDGES = np.round(np.linspace(-10.0, 5.0, 151), 10)
THRESHOLDS = (1e-1, 1e-2, 1e-3)  # fractions of singular values below these multiples of σmax
SE_CERTIFICATE = 3.0  # |SLQ log|det J| − exact| ≤ 3 standard errors over probes


@dataclass
class SpectralDensity:
    """Per-sample, per-probe Gauss rules for the distribution of log10 σᵢ(J), and what follows from them.

    Each probe's rule is its own estimate of the whole measure (both ends
    merged per probe: they share the probe), so the trace estimate and its
    standard error are computed from the stored nodes and weights — a density
    that is wrong (nodes shifted, weights moved) fails the certificate.
    """

    nodes: Tensor  # (B, n_v, q) log10 σ of the quadrature nodes
    weights: Tensor  # (B, n_v, q) masses; each probe's sum to 1
    scale: Tensor  # (B, n_v) ‖v‖²/D of each probe (1 for Rademacher probes)
    products: dict[str, Tensor]  # per operator row (sample × probe)
    seconds: float

    @property
    def mean_log(self) -> Tensor:
        """(B, n_v) per-probe estimates of the mean of ln σᵢ: (‖v‖²/D)·Σ_k τ_k ln σ_k."""
        return self.scale * (self.weights * self.nodes).sum(-1) * math.log(10)

    def trace(self, dim: int) -> tuple[Tensor, Tensor]:
        """SLQ estimate of ½ tr log(JᵀJ) = Σ log σᵢ (mean over probes) and its standard error over probes."""
        per_probe = dim * self.mean_log
        n = per_probe.shape[1]
        se = per_probe.std(1) / math.sqrt(n) if n > 1 else torch.full_like(per_probe[:, 0], math.inf)
        return per_probe.mean(1), se

    def pooled(self) -> tuple[Tensor, Tensor]:
        """(B, n_v·q) nodes and masses of the probe average (each probe weighted by ‖v‖², the ratio estimator)."""
        w = self.weights * (self.scale / self.scale.sum(1, keepdim=True))[..., None]
        return self.nodes.flatten(1), w.flatten(1)

    @property
    def sigma_max(self) -> Tensor:
        """(B,) largest node with weight: the top Ritz value converges first."""
        return 10.0 ** torch.where(self.weights > 0, self.nodes, -math.inf).flatten(1).amax(-1)

    def fraction_below(self, ratio: float) -> Tensor:
        """Estimated fraction of the σᵢ below ``ratio``·σmax, per sample."""
        nodes, masses = self.pooled()
        cut = self.sigma_max.log10() + math.log10(ratio)
        return (masses * (nodes < cut[:, None])).sum(-1)

    def histogram(self) -> np.ndarray:
        """(B, len(BIN_EDGES) − 1) mass per fixed log10 σ bin; mass outside the bins goes to the end bins."""
        nodes, masses = self.pooled()
        clipped = nodes.clamp(BIN_EDGES[0], BIN_EDGES[-1]).cpu().numpy()
        return np.stack([np.histogram(n, BIN_EDGES, weights=w)[0] for n, w in zip(clipped, masses.cpu().numpy())])


def probe_vectors(seeds: Tensor, count: int, dim: int, kind: str = "rademacher",
                  device: torch.device | str = "cpu") -> Tensor:
    """(B, count, dim) probes, each sample's from its own seed, so a batch gives one-at-a-time numbers."""
    def draw(seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        if kind == "gaussian":
            return torch.randn(count, dim, generator=g, dtype=torch.float64)
        return torch.randint(0, 2, (count, dim), generator=g).to(torch.float64) * 2 - 1

    return torch.stack([draw(int(s)) for s in seeds]).to(device)


def _log_sigma_rule(apply, v: Tensor, steps: int, shape: tuple[int, int], on_finished) -> tuple[Tensor, Tensor]:
    """Gauss rule of ``apply`` for each probe row, as natural-log σ nodes ½ ln θ and weights, (B, n_v, m)."""
    q = lanczos_quadrature(apply, v, steps, on_finished=on_finished)
    log_sigma = 0.5 * q.nodes.clamp_min(torch.finfo(q.nodes.dtype).tiny).log()
    return log_sigma.view(*shape, -1), q.weights.view(*shape, -1)


def _merge(top: Tensor, top_w: Tensor, inv: Tensor, inv_w: Tensor, split: Tensor) -> tuple[Tensor, Tensor]:
    """One rule per probe: J⁻ᵀJ⁻¹'s nodes below ``split`` (ln σ), JᵀJ's above; mass below: the ends' mean."""
    cut = split[:, None, None]
    below_top = (top_w * (top < cut)).sum(-1, keepdim=True)
    below_inv = (inv_w * (inv < cut)).sum(-1, keepdim=True)
    p = 0.5 * (below_top + below_inv)
    tiny = torch.finfo(p.dtype).tiny
    low = inv_w * (inv < cut) * p / below_inv.clamp_min(tiny)
    high = top_w * (top >= cut) * (1 - p) / (1 - below_top).clamp_min(tiny)
    return torch.cat([inv, top], -1), torch.cat([low, high], -1)


def repeat_rows(x: Tensor, probes: int) -> Tensor:
    """Each sample's row ``probes`` times, in the layout :func:`estimate_density` expects of its operator."""
    return x.repeat_interleave(probes, dim=0)


def estimate_density(op: JacobianOperator, seeds: Tensor, probes: int = 6, steps: int = 40,
                     probe: str = "rademacher", ends: str = "both", inverse_steps: int | None = None,
                     progress: Callable[[float], None] | None = None) -> SpectralDensity:
    """SLQ density of log σ(J) for each of ``len(seeds)`` samples (module docstring: the two ends, the merge).

    ``op`` holds every sample ``probes`` times (rows i·probes … (i+1)·probes − 1,
    built on :func:`repeat_rows` of the latents), so all probes of all samples
    run as one batch: the flow's sequential inverse pass is dominated by its K
    small steps, and more rows per step cost little more. ``steps`` Lanczos
    steps per probe on JᵀJ (m), ``inverse_steps`` on J⁻ᵀJ⁻¹ (default: m);
    each end costs 2 products per step and probe.
    """
    t0 = time.perf_counter()
    B = len(seeds)
    if op.batch != B * probes:
        raise ValueError(f"operator has {op.batch} rows, {B} samples x {probes} probes need {B * probes}")
    tick = None if progress is None else (lambda rows: progress(rows / (probes * (2 if ends == "both" else 1))))
    v = probe_vectors(seeds, probes, op.dim, probe, op.device)
    scale = v.pow(2).sum(-1) / op.dim
    nodes, weights = _log_sigma_rule(op.normal, v.flatten(0, 1), steps, (B, probes), tick)
    if ends == "both":
        m_inv = steps if inverse_steps is None else inverse_steps
        inv, inv_w = _log_sigma_rule(op.inverse_normal, v.flatten(0, 1), m_inv, (B, probes), tick)
        split = op.logabsdet().to(v.dtype).view(B, probes)[:, 0] / op.dim  # the exact mean of ln σ
        nodes, weights = _merge(nodes, weights, -inv, inv_w, split)  # eigenvalues of J⁻ᵀJ⁻¹ are 1/σ²
    return SpectralDensity(nodes=nodes / math.log(10), weights=weights, scale=scale, products=op.products(),
                           seconds=time.perf_counter() - t0)


def certify_density(op: JacobianOperator, density: SpectralDensity, probes: int,
                    k: float = SE_CERTIFICATE) -> dict[str, Tensor]:
    """The density's Σ log σᵢ against the flow's exact log|det J|: within ``k`` standard errors over probes."""
    exact = op.logabsdet().to(density.nodes.dtype).view(-1, probes)[:, 0]
    estimate, se = density.trace(op.dim)
    return {"slq_logdet": estimate, "slq_logdet_se": se, "exact_logdet": exact,
            "check_slq_logdet_within_3se": (estimate - exact).abs() <= k * se}


def analyse_density(flow, z: Tensor, y: Tensor, seeds: Tensor, num_blocks: int | None = None, probes: int = 6,
                    steps: int = 40, probe: str = "rademacher", inverse_steps: int | None = None,
                    progress: Callable[[float], None] | None = None) -> list[dict]:
    """Per-sample ``spectrum`` records for latents z (B, K, D): nodes and masses (zero masses dropped), the
    histogram on :data:`BIN_EDGES`, the certified trace estimate and the fractions below 10⁻ᵏ·σmax."""
    from .operators import FlowJacobian

    op = FlowJacobian(flow, repeat_rows(z, probes), repeat_rows(y, probes), num_blocks)
    density = estimate_density(op, seeds, probes=probes, steps=steps, probe=probe, inverse_steps=inverse_steps,
                               progress=progress)
    cert = certify_density(op, density, probes)
    nodes, masses = density.pooled()
    histogram = density.histogram()
    fractions = {f"{r:g}": density.fraction_below(r) for r in THRESHOLDS}
    records = []
    for i in range(len(seeds)):
        keep = masses[i] > 0
        records.append({
            "nodes_log10_sigma": nodes[i, keep].tolist(), "weights": masses[i, keep].tolist(),
            "histogram": histogram[i].tolist(),
            "slq_logdet": cert["slq_logdet"][i].item(), "slq_logdet_se": cert["slq_logdet_se"][i].item(),
            "exact_logdet": cert["exact_logdet"][i].item(),
            "ok": bool(cert["check_slq_logdet_within_3se"][i]),
            "sigma_max": density.sigma_max[i].item(),
            "fraction_below": {k: v[i].item() for k, v in fractions.items()},
            "products": int(density.products["total"].view(len(seeds), probes)[i].sum()),
        })
    return records
