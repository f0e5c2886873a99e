"""Shared test fixtures: small flows with non-trivial (randomised) affine outputs."""
from __future__ import annotations

import pytest
import torch

from mimflow_core.config import ModelConfig, get_preset


def randomise_outputs(flow: torch.nn.Module, std: float = 0.05, generator: torch.Generator | None = None) -> None:
    """A new flow is the identity (zero-init outputs); give every block's output projection random weights."""
    for block in flow.blocks:
        with torch.no_grad():
            block.proj_out.weight.normal_(0.0, std, generator=generator)
            block.proj_out.bias.normal_(0.0, std, generator=generator)


@pytest.fixture
def tiny_config() -> ModelConfig:
    return get_preset("tiny")


@pytest.fixture
def micro_config() -> ModelConfig:
    """A flow small enough for exact Jacobians: K=8 tokens x D=4 = 32 dimensions."""
    return get_preset("tiny", num_tokens=8, latent_dim=4, flow_blocks=(2, 1, 2), flow_width=32, flow_heads=2,
                      enc_width=32, enc_heads=2, enc_depth=1, dec_width=32, dec_heads=2, dec_depth=1)
