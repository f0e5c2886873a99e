"""Per-block Jacobians: each block's σmax/σmin/log|det| against svdvals of its own exact Jacobian, and the
product bounds Πσmin(J_b) ≤ σmin(J), σmax(J) ≤ Πσmax(J_b) on random and on (briefly) trained flows."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from mimflow_core.config import get_preset
from mimflow_core.flow import LatentFlow
from mimflow_core.layers import math_attention
from mimflow_lab.jacobian import FlowJacobian, estimate
from mimflow_lab.jacobian.per_block import analyse_blocks
from mimflow_lab.jacobian.synthetic import perturbed_flow


def _config(K: int, D: int):
    return get_preset("tiny", num_tokens=K, latent_dim=D, flow_blocks=(2, 1, 2), flow_width=32, flow_heads=2)


def _exact_blocks(flow, z, y):
    """Each block's dense Jacobian at the point it sees, and the whole flow's, by jacrev — independent code."""
    K, D = z.shape[1:]
    per_block, x = [], z
    with math_attention():
        for block in flow.blocks:
            f = lambda v, label, block=block: block(v.view(1, K, D), label)[0].reshape(-1)  # noqa: E731
            per_block.append(torch.stack([torch.func.jacrev(f)(x[i].reshape(-1), y[i:i + 1])
                                          for i in range(len(z))]))
            x = block(x, y)[0]
    whole = per_block[0]
    for J in per_block[1:]:
        whole = J @ whole
    return per_block, whole


def _trained_flow(K: int, D: int, steps: int = 30):
    """A flow fitted for a few Adam steps by maximum likelihood to correlated Gaussian latents (not random weights)."""
    torch.manual_seed(0)
    flow = LatentFlow(_config(K, D)).double()
    mix = torch.randn(K * D, K * D, dtype=torch.float64) / (K * D) ** 0.5 + torch.eye(K * D, dtype=torch.float64)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(steps):
        z = (torch.randn(32, K * D, dtype=torch.float64) @ mix).view(32, K, D)
        out = flow(z, torch.full((32,), -1))
        loss = 0.5 * out.eps.pow(2).flatten(1).sum(1).mean() - out.logdet.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return flow.eval().requires_grad_(False)


@pytest.fixture(scope="module", params=["random", "trained"])
def case(request):
    K, D = (8, 16) if request.param == "random" else (8, 8)
    flow = perturbed_flow(_config(K, D), std=0.08, seed=1) if request.param == "random" else _trained_flow(K, D)
    z = torch.randn(3, K, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, -1, 4])
    seeds = torch.tensor([3, 5, 7])
    whole = estimate(FlowJacobian(flow, z, y), "fast", seeds)
    return flow, z, y, seeds, whole, analyse_blocks(flow, z, y, seeds, whole), _exact_blocks(flow, z, y)


def test_each_block_matches_svdvals_of_its_own_jacobian(case):
    flow, z, y, _, _, records, (per_block, _) = case
    for b, J in enumerate(per_block):
        sv = torch.linalg.svdvals(J)
        got = torch.tensor([[r["blocks"][b]["sigma_max"], r["blocks"][b]["sigma_min"]] for r in records],
                           dtype=torch.float64)
        torch.testing.assert_close(got[:, 0], sv[:, 0], rtol=1e-4, atol=0)
        torch.testing.assert_close(got[:, 1], sv[:, -1], rtol=1e-4, atol=0)
        logdet = torch.tensor([r["blocks"][b]["logdet"] for r in records], dtype=torch.float64)
        torch.testing.assert_close(logdet, torch.linalg.slogdet(J).logabsdet, rtol=0, atol=1e-8)
    assert all(r["ok"] and all(b["ok"] for b in r["blocks"]) for r in records)


def test_product_bounds_and_shares(case):
    """The bounds hold for the exact singular values too, and the shares of Σ log κ_b add up to one."""
    _, _, _, _, whole, records, (per_block, J) = case
    sv = torch.linalg.svdvals(J)
    exact_min = torch.stack([torch.linalg.svdvals(Jb)[:, -1] for Jb in per_block]).prod(0)
    exact_max = torch.stack([torch.linalg.svdvals(Jb)[:, 0] for Jb in per_block]).prod(0)
    assert (exact_min <= sv[:, -1] * (1 + 1e-10)).all() and (sv[:, 0] <= exact_max * (1 + 1e-10)).all()
    for i, r in enumerate(records):
        assert r["checks"] == {"prod_sigma_min_le_sigma_min": True, "sigma_max_le_prod_sigma_max": True}
        assert r["prod_sigma_min"] == pytest.approx(exact_min[i].item(), rel=1e-4)
        assert r["prod_sigma_max"] == pytest.approx(exact_max[i].item(), rel=1e-4)
        assert sum(b["share_log_kappa"] for b in r["blocks"]) == pytest.approx(1.0, abs=1e-12)
        assert r["sum_log10_kappa"] >= (sv[i, 0] / sv[i, -1]).log10().item() - 1e-6


@pytest.mark.parametrize("case", ["random"], indirect=True)  # a code path: the random flow covers it
def test_a_whole_flow_estimate_outside_the_bounds_is_flagged(case):
    flow, z, y, seeds, whole, _, _ = case
    records = analyse_blocks(flow, z[:1], y[:1], seeds[:1], dataclasses.replace(
        whole, sigma_min=whole.sigma_min[:1] * 1e-3, sigma_max=whole.sigma_max[:1] * 1e3))
    assert records[0]["checks"] == {"prod_sigma_min_le_sigma_min": False, "sigma_max_le_prod_sigma_max": False}
    assert not records[0]["ok"]


@pytest.mark.parametrize("case", ["random"], indirect=True)  # a code path: the random flow covers it
def test_batch_equals_one_sample_at_a_time(case):
    flow, z, y, seeds, whole, records, _ = case
    alone = analyse_blocks(flow, z[2:], y[2:], seeds[2:], estimate(FlowJacobian(flow, z[2:], y[2:]), "fast", seeds[2:]))
    for b, a in zip(records[2]["blocks"], alone[0]["blocks"]):
        assert a["sigma_min"] == pytest.approx(b["sigma_min"], rel=1e-10)
        assert a["sigma_max"] == pytest.approx(b["sigma_max"], rel=1e-10)
