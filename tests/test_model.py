"""Encoder masking, model shapes, the paper-size preset and sampling."""
from __future__ import annotations

import pytest
import torch

from mimflow_core.config import PRESETS, get_preset
from mimflow_core.encoder import random_masking
from mimflow_core.errors import MIMFlowError
from mimflow_core.layers import patchify, unpatchify
from mimflow_core.model import MIMFlow, count_parameters


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75])
def test_encoder_shape_is_independent_of_mask_ratio_and_ratio_is_honoured(tiny_config, ratio):
    torch.manual_seed(0)
    model = MIMFlow(tiny_config).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    out = model.encode(x, mask_ratio=ratio, generator=torch.Generator().manual_seed(1))
    c = tiny_config
    assert out.z.shape == (3, c.num_tokens, c.latent_dim)
    assert out.features.shape == (3, c.num_tokens, c.enc_width)
    assert out.mask.shape == (3, c.num_patches)
    assert (out.mask.sum(1) == round(ratio * c.num_patches)).all()


def test_masked_patches_do_not_reach_the_latents(tiny_config):
    """Masking replaces patches in place: changing a masked patch's pixels must not change z."""
    torch.manual_seed(0)
    model = MIMFlow(tiny_config).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = random_masking(1, tiny_config.num_patches, 0.5, x.device, torch.Generator().manual_seed(0))
    patches = patchify(x, tiny_config.patch_size)
    edited = patches.clone()
    edited[mask] = torch.rand_like(edited[mask])
    x_edit = unpatchify(edited, tiny_config.patch_size, 3)
    with torch.no_grad():
        z1 = model.encoder(x, mask=mask).z
        z2 = model.encoder(x_edit, mask=mask).z
        z3 = model.encoder(x_edit, mask=torch.zeros_like(mask)).z
    assert torch.allclose(z1, z2, atol=1e-6)
    assert (z1 - z3).abs().max() > 1e-4


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(unpatchify(patchify(x, 4), 4, 3), x)
    # patch 0 holds the top-left 4x4 block, row-major pixels with channels last
    assert torch.equal(patchify(x, 4)[0, 0], x[0, :, :4, :4].permute(1, 2, 0).reshape(-1))


def test_paper_L_preset_matches_table_6_and_flow_parameter_count():
    c = PRESETS["L"]
    assert (c.image_size, c.patch_size, c.num_tokens, c.latent_dim, c.noise_sigma) == (256, 16, 128, 64, 0.3)
    assert (c.enc_depth, c.enc_width, c.enc_heads) == (12, 768, 12) == (c.dec_depth, c.dec_width, c.dec_heads)
    assert c.flow_blocks == (2,) * 7 + (20,) and c.flow_width == 1024
    assert (c.mask_ratio_min, c.mask_ratio_max) == (0.4, 0.6)
    with torch.device("meta"):
        model = MIMFlow(c)
    flow_params = count_parameters(model.flow)
    assert abs(flow_params - 482e6) / 482e6 < 0.05, flow_params
    # ViT-B encoder ~86M (Table 2 reports 172M for the whole MAETok autoencoder)
    assert 80e6 < count_parameters(model.encoder) < 95e6


def test_sample_shapes_and_determinism(tiny_config):
    torch.manual_seed(0)
    model = MIMFlow(tiny_config).eval()
    labels = torch.tensor([0, 5, -1])
    a = model.sample(labels, cfg=2.0, generator=torch.Generator().manual_seed(3))
    b = model.sample(labels, cfg=2.0, generator=torch.Generator().manual_seed(3))
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)
    noise = torch.randn(3, tiny_config.num_tokens, tiny_config.latent_dim, generator=torch.Generator().manual_seed(3))
    assert torch.equal(model.sample(labels, cfg=2.0, noise=noise), a)


def test_add_noise_uses_the_given_eps_or_draws_it(tiny_config):
    model = MIMFlow(tiny_config)
    z = torch.randn(2, tiny_config.num_tokens, tiny_config.latent_dim)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.add_noise(z, eps), z + tiny_config.noise_sigma * eps)
    assert torch.equal(model.add_noise(z, generator=torch.Generator().manual_seed(1)), model.add_noise(z, eps))


def test_nll_matches_gaussian_density_for_identity_flow(tiny_config):
    """A new flow is the identity, so NLL per dim is the standard normal's: 0.5 z^2 + 0.5 log 2pi."""
    model = MIMFlow(tiny_config)
    z = torch.randn(4, tiny_config.num_tokens, tiny_config.latent_dim, dtype=torch.float64)
    model = model.double()
    out = model.nll(z)
    expected = (0.5 * z.pow(2) + 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))).mean((1, 2))
    assert torch.allclose(out["nll"], expected, atol=1e-12)
    assert torch.allclose(out["bpd"], expected / torch.log(torch.tensor(2.0, dtype=torch.float64)))


def test_invalid_config_is_one_clear_error():
    with pytest.raises(MIMFlowError, match="patch_size"):
        get_preset("tiny", patch_size=5)
    with pytest.raises(MIMFlowError, match="unknown preset"):
        get_preset("huge")


def test_sincos_position_embedding_matches_mae_formula():
    from mimflow_core.layers import sincos_2d

    grid, width = 4, 16
    emb = sincos_2d(grid, width)[0]
    assert emb.shape == (grid * grid, width)
    omega = 1.0 / 10000 ** (torch.arange(4, dtype=torch.float64) / 4)
    row, col = 2, 3  # patch index row * grid + col; the first half encodes the column, the second the row
    expected = torch.cat([torch.sin(col * omega), torch.cos(col * omega), torch.sin(row * omega), torch.cos(row * omega)])
    assert torch.allclose(emb[row * grid + col].double(), expected, atol=1e-6)
    assert torch.cdist(emb, emb).add(torch.eye(grid * grid)).min() > 0.1  # every patch position is distinct


def test_pixel_refiner_starts_as_the_identity_and_learns(tiny_config):
    """The decoder's optional residual convolution changes nothing at initialisation, then trains."""
    import dataclasses

    torch.manual_seed(0)
    plain = MIMFlow(tiny_config).eval()
    refined = MIMFlow(dataclasses.replace(tiny_config, dec_refine_width=8)).eval()
    refined.load_state_dict(plain.state_dict(), strict=False)  # same transformer, plus the refiner
    z = torch.randn(2, tiny_config.num_tokens, tiny_config.latent_dim)
    torch.testing.assert_close(refined.decode(z), plain.decode(z), rtol=0, atol=0)
    target = torch.rand(2, 3, 32, 32) * 2 - 1
    ((refined.decode(z) - target) ** 2).mean().backward()
    assert refined.decoder.refine.outer.weight.grad.abs().sum() > 0
    with pytest.raises(MIMFlowError, match="dec_refine_width -1"):
        get_preset("tiny", dec_refine_width=-1)


def test_a_greyscale_model_reads_and_writes_one_channel():
    from mimflow_core.data import load_dataset
    from mimflow_lab.metrics import to_uint8

    config = get_preset("digits")
    assert config.channels == 1 and config.patch_dim == 16
    x = torch.stack([load_dataset("digits", 32, "test", channels=1)[i][0] for i in range(2)])
    out = MIMFlow(config).decode(MIMFlow(config).encode(x).z)
    assert x.shape == out.shape == (2, 1, 32, 32)
    rgb = to_uint8(x)  # what the Inception, ADM's npz and the reference batches read
    assert rgb.shape == (2, 32, 32, 3) and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    three = to_uint8(load_dataset("digits", 32, "test")[0][0][None])
    assert torch.equal(three, rgb[:1])
