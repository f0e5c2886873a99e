"""The latent flow: invertibility, exact log-determinant, autoregressive structure, torch.func."""
from __future__ import annotations

import pytest
import torch
from torch.func import jacrev, jvp, vjp

from mimflow_core.flow import LatentFlow
from mimflow_core.layers import math_attention
from mimflow_lab.jacobian.synthetic import randomise_outputs


def _flow(config, seed: int = 0) -> LatentFlow:
    torch.manual_seed(seed)
    flow = LatentFlow(config).double().eval()
    randomise_outputs(flow, std=0.1)
    return flow


def _flat_fn(flow, y, cfg=1.0, blocks=None):
    K, D = flow.config.num_tokens, flow.config.latent_dim
    modules = flow.blocks if blocks is None else blocks

    def f(v):
        x = v.reshape(1, K, D)
        for block in modules:
            x, _ = block(x, y, cfg)
        return x.reshape(-1)
    return f


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_reverse_inverts_forward(micro_config, cfg):
    flow = _flow(micro_config)
    z = torch.randn(5, micro_config.num_tokens, micro_config.latent_dim, dtype=torch.float64)
    y = torch.tensor([0, 3, -1, 9, 2])
    with torch.no_grad():
        eps = flow(z, y, cfg).eps
    assert (eps - z).abs().max() > 1e-2  # the randomised flow is not the identity
    assert torch.allclose(flow.reverse(eps, y, cfg), z, atol=1e-5, rtol=0)


def test_guidance_changes_only_conditional_block(micro_config):
    flow = _flow(micro_config)
    z = torch.randn(3, micro_config.num_tokens, micro_config.latent_dim, dtype=torch.float64)
    y = torch.tensor([1, 2, 3])
    with torch.no_grad():
        plain, guided = flow(z, y, 1.0), flow(z, y, 3.0)
    for a, b in zip(plain.block_outputs[:-1], guided.block_outputs[:-1]):
        assert torch.equal(a, b)
    assert (plain.eps - guided.eps).abs().max() > 1e-6


def test_logdet_equals_slogdet_of_autograd_jacobian(micro_config):
    flow = _flow(micro_config)
    y = torch.tensor([4])
    z = torch.randn(1, micro_config.num_tokens, micro_config.latent_dim, dtype=torch.float64)
    with math_attention():
        J = jacrev(_flat_fn(flow, y))(z.reshape(-1))
    sign, logabsdet = torch.linalg.slogdet(J)
    with torch.no_grad():
        logdet = flow(z, y).logdet
    assert abs(logabsdet.item()) > 1e-3
    assert torch.allclose(logdet, logabsdet.reshape(1), atol=1e-6, rtol=0)


def test_each_block_is_triangular_in_its_permuted_token_order(micro_config):
    flow = _flow(micro_config)
    K, D = micro_config.num_tokens, micro_config.latent_dim
    z = torch.randn(1, K, D, dtype=torch.float64)
    y = torch.tensor([7])
    with math_attention():
        for i, block in enumerate(flow.blocks):
            J = jacrev(_flat_fn(flow, y, blocks=[block]))(z.reshape(-1)).reshape(K, D, K, D)
            order = torch.arange(K).flip(0) if block.flip else torch.arange(K)
            Jp = J[order][:, :, order]  # rows and columns in the block's own token order
            for t in range(K - 1):
                future = Jp[t, :, t + 1:]
                assert torch.all(future == 0), f"block {i}: token {t} depends on later tokens"
                diag = Jp[t, :, t]
                assert torch.allclose(diag, torch.diag(torch.diagonal(diag)))  # elementwise affine per token
            below = Jp[1:, :, 0]
            assert below.abs().max() > 0  # and it is not trivially diagonal
            z, _ = block(z, y)


def test_new_flow_is_identity(tiny_config):
    flow = LatentFlow(tiny_config).eval()
    z = torch.randn(4, tiny_config.num_tokens, tiny_config.latent_dim)
    with torch.no_grad():
        out = flow(z, torch.arange(4))
    assert torch.equal(out.eps, z)
    assert torch.equal(out.logdet, torch.zeros(4))


def test_jvp_and_vjp_match_jacrev_columns_and_rows(micro_config):
    flow = _flow(micro_config)
    f = _flat_fn(flow, torch.tensor([2]))
    n = micro_config.latent_numel
    z = torch.randn(n, dtype=torch.float64)
    with math_attention():
        J = jacrev(f)(z)
        for i in (0, n // 2, n - 1):
            e = torch.zeros(n, dtype=torch.float64)
            e[i] = 1.0
            _, column = jvp(f, (z,), (e,))
            _, pullback = vjp(f, z)
            (row,) = pullback(e)
            assert torch.allclose(column, J[:, i], atol=1e-12)
            assert torch.allclose(row, J[i, :], atol=1e-12)


def test_fused_and_math_attention_agree(micro_config):
    flow = _flow(micro_config)
    z = torch.randn(2, micro_config.num_tokens, micro_config.latent_dim, dtype=torch.float64)
    with torch.no_grad():
        fused = flow(z, torch.tensor([1, -1]))
        with math_attention():
            explicit = flow(z, torch.tensor([1, -1]))
    assert torch.allclose(fused.eps, explicit.eps, atol=1e-10)


def test_softplus_scale_is_invertible_and_exact(micro_config):
    import dataclasses
    config = dataclasses.replace(micro_config, flow_scale="softplus", flow_gated_attn=False)
    flow = _flow(config)
    z = torch.randn(2, config.num_tokens, config.latent_dim, dtype=torch.float64)
    y = torch.tensor([0, 1])
    with torch.no_grad():
        out = flow(z, y)
    assert torch.allclose(flow.reverse(out.eps, y), z, atol=1e-8)
    with math_attention():
        J = jacrev(_flat_fn(flow, y[:1]))(z[0].reshape(-1))
    assert torch.allclose(out.logdet[0], torch.linalg.slogdet(J)[1], atol=1e-8)
