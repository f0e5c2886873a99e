"""How a linear probe is trained: one record shared by the solver and the protocol.

Every field is written into ``probe.json`` (in this order), so a result says
exactly which weight-decay grid, seeds, split and optimiser settings made it.
"""
from __future__ import annotations

from dataclasses import dataclass

WEIGHT_DECAYS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
SEEDS: tuple[int, ...] = (0, 1, 2)


@dataclass
class ProbeSettings:
    """How a probe is trained; every field is recorded in the result files."""

    weight_decays: tuple[float, ...] = WEIGHT_DECAYS
    seeds: tuple[int, ...] = SEEDS
    val_fraction: float = 0.1
    full_batch_max: int = 2**26  # L-BFGS full-batch while n_train * max(dim, classes) stays below this
    lbfgs_max_iter: int = 1000
    lbfgs_tolerance: float = 1e-4  # on the largest gradient entry, as scikit-learn's LogisticRegression
    sgd_epochs: int = 30
    sgd_batch_size: int = 1024
    sgd_lr: float = 0.1
    device: str = "cpu"
