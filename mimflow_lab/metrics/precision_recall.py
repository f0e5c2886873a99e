"""Improved precision and recall (Kynkäänniemi et al. 2019) with ADM's semantics.

Each set of features spans a manifold: the union of balls around its points
whose radius is the *squared* distance to the k-th nearest neighbour (k = 3;
ADM takes the 4th smallest distance of a row, the point itself included).
Precision is the share of samples inside any reference ball, recall the share
of references inside any sample ball; a point on a ball's edge is inside
(``<=``), as in ADM.

Distances are computed block by block (``chunk`` rows x ``chunk`` columns), so
memory stays bounded at any N on a CPU or a GPU: every block is used twice
(the radii of a set use only the upper triangle of its blocks, the row and
column views of one block; the two coverage tests share one pass over the
cross blocks).
"""
from __future__ import annotations

import numpy as np
import torch

from mimflow_core.errors import MIMFlowError

K_NEAREST = 3
CHUNK = 4096  # rows = columns of a distance block (64 MB in float32); smaller blocks skip more symmetric work


def squared_distances(u: torch.Tensor, v: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """|u_i - v_j|^2 as |u|^2 - 2 u.v + |v|^2 (one matmul), clamped at 0 against rounding, in ``dtype`` (default:
    the inputs').

    Only the output block is as large as rows x columns: the norms are summed without squaring a copy of the
    rows, |u|^2 is broadcast by addmm itself and |v|^2 added in place (a rows x columns temporary per block
    was the peak of density/coverage).
    """
    if dtype is not None:
        u, v = u.to(dtype), v.to(dtype)
    d = torch.addmm(torch.einsum("ij,ij->i", u, u)[:, None], u, v.T, alpha=-2.0)
    return d.add_(torch.einsum("ij,ij->i", v, v)).clamp_min_(0.0)


def _keep_smallest(best: torch.Tensor | None, candidates: torch.Tensor, n: int) -> torch.Tensor:
    """Merge a block's row-wise n smallest values into the running n smallest."""
    smallest = candidates.topk(min(n, candidates.shape[1]), dim=1, largest=False).values
    if best is None:
        return smallest
    merged = torch.cat([best, smallest], dim=1)
    return merged.topk(min(n, merged.shape[1]), dim=1, largest=False).values


def manifold_radii(features: torch.Tensor, k: int = K_NEAREST, chunk: int = CHUNK,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest neighbour (the point itself is the 0th), computed
    in ``dtype`` (default: the features')."""
    if len(features) <= k:
        raise MIMFlowError(f"precision/recall: need more than k={k} points, got {len(features)}")
    blocks = features.split(chunk)
    best: list[torch.Tensor | None] = [None] * len(blocks)
    for i, rows in enumerate(blocks):
        for j in range(i, len(blocks)):
            d = squared_distances(rows, blocks[j], dtype)
            best[i] = _keep_smallest(best[i], d, k + 1)
            if j != i:  # the same block seen from block j's rows
                best[j] = _keep_smallest(best[j], d.T, k + 1)
    return torch.cat([b[:, k] for b in best])


def feature_pair(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, what: str,
                 device: str | torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets as (N, dim) tensors on ``device``, refused in one line (prefixed ``what``) when their
    shapes differ or they hold NaN/Inf: the input check of every nearest-neighbour metric.

    Floats narrower than ``dtype`` stay as they are (float32 features for float64 distances): the distance
    blocks convert their rows (:func:`squared_distances`), exactly, so no float64 copy of all features is made.
    """
    real, fake = (_stored(torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x), device, dtype)
                  for x in (real, fake))
    if real.shape[1:] != fake.shape[1:] or real.dim() != 2:
        raise MIMFlowError(f"{what}: feature shapes differ: {tuple(real.shape)} vs {tuple(fake.shape)}")
    if not (torch.isfinite(real).all() and torch.isfinite(fake).all()):
        raise MIMFlowError(f"{what}: features contain NaN or Inf")
    return real, fake


FeatureArray = np.ndarray | torch.Tensor


def inside_masks(real: FeatureArray, fake: FeatureArray, k: int = K_NEAREST, chunk: int = CHUNK,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """(each sample inside a reference ball, each reference inside a sample ball): the per-point tests whose
    shares are precision and recall (kept per point so a bootstrap can reweight them)."""
    real, fake = feature_pair(real, fake, "precision/recall", device, dtype)
    real_radii, fake_radii = manifold_radii(real, k, chunk, dtype), manifold_radii(fake, k, chunk, dtype)
    fake_inside = torch.zeros(len(fake), dtype=torch.bool, device=device)
    real_inside = torch.zeros(len(real), dtype=torch.bool, device=device)
    for i, fake_rows in enumerate(fake.split(chunk)):
        fake_slice = slice(i * chunk, i * chunk + len(fake_rows))
        for j, real_rows in enumerate(real.split(chunk)):
            real_slice = slice(j * chunk, j * chunk + len(real_rows))
            d = squared_distances(fake_rows, real_rows, dtype)
            fake_inside[fake_slice] |= (d <= real_radii[real_slice]).any(dim=1)
            real_inside[real_slice] |= (d <= fake_radii[fake_slice, None]).any(dim=0)
    return fake_inside, real_inside


def _stored(x: torch.Tensor, device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
    narrower = x.is_floating_point() and x.dtype.itemsize <= dtype.itemsize
    return x.to(device, x.dtype if narrower else dtype)


def precision_recall(real: FeatureArray, fake: FeatureArray, k: int = K_NEAREST, chunk: int = CHUNK,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(precision, recall) of ``fake`` samples against ``real`` reference features (both (N, dim))."""
    return shares(*inside_masks(real, fake, k, chunk, device, dtype))


def shares(*masks: torch.Tensor) -> tuple[float, ...]:
    """The share of True in each mask: (precision, recall) from :func:`inside_masks`."""
    return tuple(mask.double().mean().item() for mask in masks)
