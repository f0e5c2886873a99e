"""Density and coverage (Naeem et al. 2020, k = 5), computed in blocks like :mod:`.precision_recall`.

Precision/recall count a sample as good if it falls in *any* reference ball,
so one outlying reference with a huge ball inflates it. Density counts *how
many* reference balls hold each sample (divided by k, so ~1 when the sets
match), and coverage is the share of references whose ball holds at least one
sample: both robust to outliers. Radii are Euclidean distances to the k-th
nearest neighbour within the reference set (the point itself is the 0th);
comparisons are strict (``<``), as in the ``prdc`` package. Here we compare
squared distances (same order) block by block, so memory is bounded at any N
(``prdc`` builds full N x N matrices); float64 by default so the counts agree
with ``prdc``'s float64 Euclidean distances.
"""
from __future__ import annotations

import numpy as np
import torch

from mimflow_core.errors import MIMFlowError

from .precision_recall import CHUNK, feature_pair, manifold_radii, squared_distances

DC_NEAREST = 5


def density_coverage(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = DC_NEAREST,
    chunk: int = CHUNK,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> tuple[float, float]:
    """(density, coverage) of ``fake`` samples against ``real`` reference features (both (N, dim))."""
    real, fake = feature_pair(real, fake, "density/coverage", device, dtype)
    if len(fake) < 1 or len(real) <= k:
        raise MIMFlowError(f"density/coverage: need samples and more than k={k} reference points, got "
                           f"{len(fake)} and {len(real)}")
    radii = manifold_radii(real, k, chunk)  # squared k-NN distances of the references
    inside_count = torch.zeros((), dtype=torch.float64, device=device)
    nearest_fake = torch.full((len(real),), float("inf"), dtype=dtype, device=device)
    for fake_rows in fake.split(chunk):
        for j, real_rows in enumerate(real.split(chunk)):
            real_slice = slice(j * chunk, j * chunk + len(real_rows))
            d = squared_distances(fake_rows, real_rows)
            inside_count += (d < radii[real_slice]).sum()
            nearest_fake[real_slice] = torch.minimum(nearest_fake[real_slice], d.min(dim=0).values)
    density = inside_count.item() / (k * len(fake))
    coverage = (nearest_fake < radii).double().mean().item()
    return density, coverage
