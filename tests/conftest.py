"""Shared test fixtures: model configs small enough for exact Jacobians, and one short real training run."""
from __future__ import annotations

import os
import tempfile

import pytest

from mimflow_core.config import ModelConfig, get_preset
from mimflow_core.train import TrainOptions, train

# Under pytest-xdist (the README's command runs two workers on CI's two cores) each worker computes on one thread:
# two workers with two threads each would oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

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


# The tiny CPU recipe of the README ("The tiny recipe") and the demo, for a few dozen steps.
SHORT_RECIPE = dict(batch_size=32, lr=1e-3, warmup_steps=10, flow_weight=0.03)


@pytest.fixture(scope="session")
def phase1_run(tmp_path_factory):
    """60 phase-1 steps of the tiny preset on digits; the trainer and the probe tests both read it."""
    out = tmp_path_factory.mktemp("p1")
    result = train(TrainOptions(out=str(out), steps=60, log_every=5, ckpt_every=30, **SHORT_RECIPE))
    return out, result
