"""The SLQ density of log σ(J) against the histogram of exact svdvals of the same Jacobians (jacrev), its
log|det J| certificate, and the fractions of small singular values."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from mimflow_core.config import get_preset
from mimflow_core.layers import math_attention
from mimflow_lab.jacobian import DenseJacobian, FlowJacobian
from mimflow_lab.jacobian.krylov import lanczos_quadrature
from mimflow_lab.jacobian.spectrum import (BIN_EDGES, analyse_density, certify_density, estimate_density,
                                           repeat_rows)
from mimflow_lab.jacobian.synthetic import perturbed_flow, prescribed_spectrum

K, D = 8, 32  # 256 dimensions: exact Jacobians are cheap, and the sequential inverse has only 8 steps
PROBES = 8  # the defaults of Settings / the CLI: m = 40 steps, n_v = 8 probes


def _exact_sv(flow, z, y) -> torch.Tensor:
    f = lambda v, label: flow(v.view(1, K, D), label).eps.reshape(-1)  # noqa: E731
    with math_attention():
        J = torch.stack([torch.func.jacrev(f)(z[i].reshape(-1), y[i:i + 1]) for i in range(len(z))])
    return torch.linalg.svdvals(J)


@pytest.fixture(scope="module", params=[0.06, 0.1], ids=["kappa~1e2", "kappa~1e3"])
def flow_case(request):
    config = get_preset("tiny", num_tokens=K, latent_dim=D, flow_blocks=(2, 1, 2), flow_width=32, flow_heads=2)
    flow = perturbed_flow(config, std=request.param, seed=0)
    z = torch.randn(2, K, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, -1])
    seeds = torch.tensor([4, 9])
    op = FlowJacobian(flow, repeat_rows(z, PROBES), repeat_rows(y, PROBES))
    return flow, z, y, seeds, op, estimate_density(op, seeds, probes=PROBES), _exact_sv(flow, z, y)


def _w1(density, sv: torch.Tensor) -> list[float]:
    nodes, masses = density.pooled()
    return [wasserstein_distance(sv[i].log10().numpy(), nodes[i].numpy(), None, masses[i].numpy())
            for i in range(len(sv))]


def test_density_matches_exact_svdvals_within_005_decades(flow_case):
    *_, density, sv = flow_case
    assert max(_w1(density, sv)) <= 0.05
    assert (sv[:, 0] / sv[:, -1]).min() > 30  # not a trivially flat spectrum


def test_the_inverse_end_is_what_resolves_the_small_singular_values(flow_case):
    """The decision in the module docstring, measured: JᵀJ alone is worse, most where κ is large."""
    flow, z, y, seeds, _, density, sv = flow_case
    op = FlowJacobian(flow, repeat_rows(z, PROBES), repeat_rows(y, PROBES))
    normal_only = estimate_density(op, seeds, probes=PROBES, ends="normal")
    assert all(a < b for a, b in zip(_w1(density, sv), _w1(normal_only, sv)))


def test_trace_is_certified_and_a_shifted_density_is_not(flow_case):
    _, _, _, _, op, density, sv = flow_case
    cert = certify_density(op, density, PROBES)
    torch.testing.assert_close(cert["exact_logdet"], sv.log().sum(1), rtol=0, atol=1e-8)
    assert cert["check_slq_logdet_within_3se"].all()
    assert (cert["slq_logdet_se"] > 0).all()
    shifted = dataclasses.replace(density, nodes=density.nodes + 0.25)  # every σ 1.8x too large
    assert not certify_density(op, shifted, PROBES)["check_slq_logdet_within_3se"].any()


@pytest.mark.parametrize("flow_case", [0.1], indirect=True, ids=["kappa~1e3"])  # a code path: one flow covers it
def test_batch_equals_one_sample_at_a_time(flow_case):
    flow, z, y, seeds, _, density, _ = flow_case
    op = FlowJacobian(flow, repeat_rows(z[1:], PROBES), repeat_rows(y[1:], PROBES))
    alone = estimate_density(op, seeds[1:], probes=PROBES)
    torch.testing.assert_close(alone.nodes[0], density.nodes[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(alone.weights[0], density.weights[1], rtol=0, atol=1e-10)


def test_fractions_and_histogram_on_a_prescribed_band_of_small_singular_values():
    """30 % of the σ in a band near 10⁻³·σmax (one bad band, not one bad direction): the fractions see it."""
    n = 200
    s = torch.cat([torch.logspace(0, -0.8, 140), torch.logspace(-1.6, -1.9, 30), torch.logspace(-2.9, -3.3, 30)])
    mats = prescribed_spectrum(s.to(torch.float64), seed=3)[None]
    op = DenseJacobian(repeat_rows(mats, PROBES))
    density = estimate_density(op, torch.tensor([5]), probes=PROBES)
    exact = {r: float((s < r * s.max()).double().mean()) for r in (1e-1, 1e-2, 1e-3)}
    for r, value in exact.items():
        assert density.fraction_below(r).item() == pytest.approx(value, abs=0.04)
    hist = density.histogram()[0]
    reference = np.histogram(np.log10(s.numpy()), BIN_EDGES)[0] / n
    assert hist.sum() == pytest.approx(1.0, abs=1e-12)
    # the same mass per decade (bins are 0.1 decades; compare on whole decades, where probe noise averages out)
    assert np.abs(hist.reshape(-1, 10).sum(1) - reference.reshape(-1, 10).sum(1)).max() <= 0.05
    assert density.sigma_max.item() == pytest.approx(1.0, rel=1e-8)


def test_lanczos_quadrature_is_gauss_quadrature():
    """With m nodes the rule integrates λ^k exactly for k < 2m: moments vᵀAᵏv against explicit powers."""
    A = prescribed_spectrum(torch.logspace(0, -1, 60, dtype=torch.float64), seed=1)
    A = A.T @ A
    v = torch.randn(2, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q = lanczos_quadrature(lambda x, idx: x @ A, v, steps=5)
    u = v / v.norm(dim=1, keepdim=True)
    for k in range(10):
        exact = torch.einsum("bi,ij,bj->b", u, torch.linalg.matrix_power(A, k), u)
        torch.testing.assert_close((q.weights * q.nodes**k).sum(1), exact, rtol=1e-9, atol=0)
    identity = lanczos_quadrature(lambda x, idx: 2 * x, v, steps=5)  # invariant after one step: one node
    assert identity.steps.tolist() == [1, 1] and identity.weights[:, 0].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("flow_case", [0.1], indirect=True, ids=["kappa~1e3"])  # a code path: one flow covers it
def test_records_of_a_batch(flow_case):
    flow, z, y, seeds, _, density, sv = flow_case
    records = analyse_density(flow, z, y, seeds, probes=PROBES)
    for r, s in zip(records, sv):
        assert len(r["histogram"]) == len(BIN_EDGES) - 1 and sum(r["weights"]) == pytest.approx(1.0, abs=1e-12)
        assert r["ok"] and r["exact_logdet"] == pytest.approx(s.log().sum().item(), abs=1e-8)
        assert r["sigma_max"] == pytest.approx(s[0].item(), rel=1e-8)
        assert set(r["fraction_below"]) == {"0.1", "0.01", "0.001"}


@pytest.mark.parametrize("flow_case", [0.1], indirect=True, ids=["kappa~1e3"])  # a code path: one flow covers it
def test_the_inverse_end_runs_its_own_step_count(flow_case):
    """``inverse_steps`` sets the J⁻ᵀJ⁻¹ end alone: 2 products per step there, the JᵀJ end keeps m = 40."""
    flow, z, y, seeds, _, _, _ = flow_case
    op = FlowJacobian(flow, repeat_rows(z, PROBES), repeat_rows(y, PROBES))
    density = estimate_density(op, seeds, probes=PROBES, steps=40, inverse_steps=12)
    counts = {k: set(v.tolist()) for k, v in density.products.items()}
    assert counts == {"J": {40}, "JT": {40}, "Jinv": {12}, "JinvT": {12}, "total": {104}}
    assert density.nodes.shape == (len(seeds), PROBES, 40 + 12)
    records = analyse_density(flow, z, y, seeds, probes=PROBES, inverse_steps=12)
    assert [r["products"] for r in records] == [PROBES * 104] * len(seeds)
