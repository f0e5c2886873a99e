"""Jacobian spectrum estimators: every method against exact SVD, on synthetic matrices and real flows."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from mimflow_core.config import get_preset
from mimflow_core.layers import math_attention
from mimflow_lab.jacobian import DenseJacobian, FlowJacobian, estimate
from mimflow_lab.jacobian.analysis import sample_records, summarise
from mimflow_lab.jacobian.certificates import certify
from mimflow_lab.jacobian.krylov import lanczos_top, power_iteration
from mimflow_lab.jacobian.synthetic import kahan_matrix, perturbed_flow, prescribed_spectrum

RTOL = 1e-4  # the bar: each method within 1e-4 relative of svdvals


def _config(K: int, D: int, **kw):
    return get_preset("tiny", num_tokens=K, latent_dim=D, flow_blocks=(2, 1, 2), flow_width=32, flow_heads=2, **kw)


def _latents(B: int, K: int, D: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, K, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _flow_jacobians(flow, z, y, num_blocks=None) -> torch.Tensor:
    """Dense Jacobians by jacrev, computed here independently of the operator under test."""
    K, D = z.shape[1:]
    blocks = list(flow.blocks)[:num_blocks]

    def f(v, label):
        x = v.view(1, K, D)
        for block in blocks:
            x, _ = block(x, label)
        return x.reshape(-1)

    with math_attention():
        return torch.stack([torch.func.jacrev(f)(z[i].reshape(-1), y[i:i + 1]) for i in range(z.shape[0])])


def _assert_close(est, sv: torch.Tensor, rtol: float = RTOL) -> None:
    torch.testing.assert_close(est.sigma_max, sv[:, 0], rtol=rtol, atol=0)
    torch.testing.assert_close(est.sigma_min, sv[:, -1], rtol=rtol, atol=0)


# ------------------------------------------------------------------ synthetic spectra
@pytest.mark.parametrize("method", ["paper", "fast", "exact"])
def test_prescribed_spectra(method):
    """Known singular values (κ = 10, 316, 1000), not just agreement with another solver.

    The smallest one sits below a gap (inverse iteration needs one to converge
    within the paper route's budget; Lanczos would not).
    """
    spectra = torch.stack([torch.cat([torch.logspace(0, -0.5, 95, dtype=torch.float64), torch.tensor([10.0**-e])])
                           for e in (1.0, 2.5, 3.0)]) * 3.0
    mats = torch.stack([prescribed_spectrum(s, seed=i) for i, s in enumerate(spectra)])
    est = estimate(DenseJacobian(mats), method, torch.tensor([0, 10, 20]))
    _assert_close(est, spectra)
    assert est.converged_max.all() and est.converged_min.all()


@pytest.mark.parametrize("method", ["paper", "fast"])
def test_kahan_sigma_min_is_far_below_the_diagonal(method):
    """A lower-triangular Kahan matrix: σmin is ~700x below the smallest diagonal entry; find σmin."""
    L = kahan_matrix(64, theta=1.45)
    sv = torch.linalg.svdvals(L)[None]
    assert L.diagonal().abs().min() > 100 * sv[0, -1]  # the trap is real
    op = DenseJacobian(L[None], lower=True)
    est = estimate(op, method, torch.tensor([3]))
    _assert_close(est, sv)
    assert certify(op, est)["ok"].all()


def test_lanczos_converges_where_power_iteration_stalls():
    """Top two singular values 1 and 0.999: power iteration needs ~10⁴ steps, Lanczos a few dozen."""
    s = torch.cat([torch.tensor([1.0, 0.999]), torch.linspace(0.9, 0.1, 62)]).to(torch.float64)
    A = prescribed_spectrum(s, seed=5)
    normal = lambda v, idx: v @ (A.T @ A)  # noqa: E731 (A.T A is symmetric)
    v0 = torch.randn(1, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    power = power_iteration(normal, v0, tol=1e-8, max_iter=300)
    lanczos = lanczos_top(normal, v0, tol=1e-8, max_iter=300)
    assert not power.converged.item()
    assert lanczos.converged.item() and lanczos.iterations.item() < 64
    assert abs(lanczos.value.sqrt().item() - 1.0) < 1e-8


# ------------------------------------------------------------------ real flows
@pytest.fixture(scope="module")
def flow_case():
    """A real LatentFlow, K=32 x D=16 = 512 dims, κ ≈ 50–200, with its exact Jacobians."""
    flow = perturbed_flow(_config(32, 16), std=0.06, seed=0)
    z, y = _latents(3, 32, 16), torch.tensor([1, -1, 3])
    J = _flow_jacobians(flow, z, y)
    return flow, z, y, J


def test_flow_products_match_dense_jacobian(flow_case):
    """J·v, Jᵀ·u, J⁻¹·w, J⁻ᵀ·w and log|det J| of the operator against the dense Jacobian."""
    flow, z, y, J = flow_case
    op = FlowJacobian(flow, z, y)
    w = torch.randn(3, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    idx = torch.arange(3)
    torch.testing.assert_close(op.matvec(w, idx), torch.einsum("bij,bj->bi", J, w), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.rmatvec(w, idx), torch.einsum("bji,bj->bi", J, w), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.solve(w, idx), torch.linalg.solve(J, w), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(op.rsolve(w, idx), torch.linalg.solve(J.mT, w), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(op.logabsdet(), torch.linalg.slogdet(J).logabsdet, rtol=0, atol=1e-8)
    sub = torch.tensor([0, 2])  # a subset reuses the recorded graph with zero-padded rows
    torch.testing.assert_close(op.solve(w[sub], sub), torch.linalg.solve(J[sub], w[sub]), rtol=1e-8, atol=1e-8)
    assert op.counts["Jinv"].tolist() == [2, 1, 2]


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_flow_methods_match_svdvals(flow_case, method):
    flow, z, y, J = flow_case
    op = FlowJacobian(flow, z, y)
    est = estimate(op, method, torch.arange(3) * 2)
    _assert_close(est, torch.linalg.svdvals(J))
    assert certify(op, est)["ok"].all()


def test_paper_method_matches_svdvals():
    """The paper's route on a smaller flow (CG makes it costly): K=8 x D=8, κ ≈ 20."""
    flow = perturbed_flow(_config(8, 8), std=0.08, seed=3)
    z, y = _latents(2, 8, 8, seed=4), torch.tensor([0, -1])
    op = FlowJacobian(flow, z, y)
    est = estimate(op, "paper", torch.tensor([5, 7]))
    _assert_close(est, torch.linalg.svdvals(_flow_jacobians(flow, z, y)))
    assert certify(op, est)["ok"].all()
    assert (est.products["Jinv"] == 0).all()  # the paper route never uses the inverse


def test_softplus_flow_and_first_blocks_only():
    """STARFlow's softplus scale (κ in the thousands), and --blocks: only the first two blocks."""
    flow = perturbed_flow(_config(16, 8, flow_scale="softplus"), std=0.15, seed=0)
    z, y = _latents(2, 16, 8), torch.tensor([2, 5])
    for blocks in (None, 2):
        est = estimate(FlowJacobian(flow, z, y, num_blocks=blocks), "fast", torch.tensor([0, 2]))
        _assert_close(est, torch.linalg.svdvals(_flow_jacobians(flow, z, y, blocks)))
    assert est.kappa.min() > 100


def test_batch_equals_one_sample_at_a_time(flow_case):
    flow, z, y, _ = flow_case
    seeds = torch.tensor([11, 13, 17])
    batched = estimate(FlowJacobian(flow, z, y), "fast", seeds)
    for i in range(3):
        alone = estimate(FlowJacobian(flow, z[i:i + 1], y[i:i + 1]), "fast", seeds[i:i + 1])
        torch.testing.assert_close(batched.sigma_max[i:i + 1], alone.sigma_max, rtol=1e-10, atol=0)
        torch.testing.assert_close(batched.sigma_min[i:i + 1], alone.sigma_min, rtol=1e-10, atol=0)
        assert batched.products["total"][i] == alone.products["total"][0]


# ------------------------------------------------------------------ certificates and failures
def test_certificates_fire_on_wrong_estimates():
    L = kahan_matrix(64, theta=1.45)
    op = DenseJacobian(L[None], lower=True)
    good = estimate(op, "fast", torch.tensor([0]))
    assert certify(op, good)["ok"].all()
    diagonal = dataclasses.replace(good, sigma_min=L.diagonal().abs().min().reshape(1))  # σmin read off the diagonal
    assert not certify(op, diagonal)["check_sigma_min_le_norm_Jv"].any()
    low = dataclasses.replace(good, sigma_max=good.sigma_max * 0.5)
    assert not certify(op, low)["check_sigma_max_ge_norm_Jv"].any()
    below_geomean = dataclasses.replace(good, sigma_max=torch.full((1,), 1e-3, dtype=torch.float64))
    cert = certify(op, below_geomean)
    assert not cert["check_geomean_le_sigma_max"].any() and not cert["ok"].any()


def test_non_convergence_is_reported_and_counted():
    """A 400-product budget: the paper route fails at κ=1000, not at κ=8 with isolated extremes."""
    easy = torch.cat([torch.tensor([4.0]), torch.linspace(2.0, 1.0, 126), torch.tensor([0.5])])
    spectra = torch.stack([torch.logspace(0, -3, 128, dtype=torch.float64), easy.to(torch.float64)])
    op = DenseJacobian(torch.stack([prescribed_spectrum(s, seed=i) for i, s in enumerate(spectra)]))
    est = estimate(op, "paper", torch.tensor([0, 2]), max_products=400)
    assert est.converged_min.tolist() == [False, True]
    cert = certify(op, est)
    records = sample_records(est, cert, torch.arange(2), torch.tensor([-1, -1]))
    assert [r["ok"] for r in records] == [False, True]
    summary = summarise(records)
    assert summary["n_not_converged"] == 1 and summary["n_ok"] == 1
    assert summary["sigma_min"]["max"] == pytest.approx(spectra[1, -1].item(), rel=RTOL)  # only the good one
    capped = estimate(DenseJacobian(op.matrices), "fast", torch.tensor([0, 2]), max_iter=3)
    assert not capped.converged_min.any()


def test_resume_reuses_finished_batches():
    """analyse_flow skips batches it is given and computes only the rest, with the same numbers."""
    from mimflow_lab.jacobian.analysis import Settings, analyse_flow

    flow = perturbed_flow(_config(8, 4), std=0.08, seed=2)
    z, y = _latents(4, 8, 4, seed=6), torch.tensor([0, 1, -1, 2])
    settings = Settings(batch=2)
    first = analyse_flow(flow, z, y, settings)
    computed = []
    second = analyse_flow(flow, z, y, settings, done={0: first[:2]}, on_batch=lambda start, _: computed.append(start))
    assert computed == [2] and second[:2] == first[:2]
    assert [r["sigma_min"] for r in second[2:]] == pytest.approx([r["sigma_min"] for r in first[2:]], rel=1e-10)
