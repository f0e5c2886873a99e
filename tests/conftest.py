"""Shared test fixtures: model configs small enough for exact Jacobians."""
from __future__ import annotations

import os
import tempfile

import pytest

from mimflow_core.config import ModelConfig, get_preset

# Feature and reference caches of the whole test session (subprocesses included) go to a fresh directory,
# never the user's ~/.cache.
os.environ["MIMFLOW_CACHE"] = tempfile.mkdtemp(prefix="mimflow-test-cache-")


@pytest.fixture
def tiny_config() -> ModelConfig:
    return get_preset("tiny")


@pytest.fixture
def micro_config() -> ModelConfig:
    """A flow small enough for exact Jacobians: K=8 tokens x D=4 = 32 dimensions."""
    return get_preset("tiny", num_tokens=8, latent_dim=4, flow_blocks=(2, 1, 2), flow_width=32, flow_heads=2,
                      enc_width=32, enc_heads=2, enc_depth=1, dec_width=32, dec_heads=2, dec_depth=1)
