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

from dataclasses import dataclass

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


def _keep_smallest(best: tuple[torch.Tensor, torch.Tensor] | None, candidates: torch.Tensor, offset: int, n: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a block's row-wise n smallest values (and their column indices, the block starting at column
    ``offset``) into the running n smallest."""
    values, columns = candidates.topk(min(n, candidates.shape[1]), dim=1, largest=False)
    columns = columns + offset
    if best is not None:
        values, columns = torch.cat([best[0], values], dim=1), torch.cat([best[1], columns], dim=1)
        values, order = values.topk(min(n, values.shape[1]), dim=1, largest=False)
        columns = columns.gather(1, order)
    return values, columns


def nearest_neighbours(features: torch.Tensor, n: int, chunk: int = CHUNK, dtype: torch.dtype | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point's ``n`` smallest squared distances within ``features`` (the point itself included, at distance
    ~0) and the indices of those points, nearest first, in ``dtype`` (default: the features')."""
    blocks = features.split(chunk)
    best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(blocks)
    for i, rows in enumerate(blocks):
        for j in range(i, len(blocks)):
            d = squared_distances(rows, blocks[j], dtype)
            best[i] = _keep_smallest(best[i], d, j * chunk, n)
            if j != i:  # the same block seen from block j's rows
                best[j] = _keep_smallest(best[j], d.T, i * chunk, n)
    return torch.cat([b[0] for b in best]), torch.cat([b[1] for b in best])


def manifold_radii(features: torch.Tensor, k: int = K_NEAREST, chunk: int = CHUNK,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest neighbour (the point itself is the 0th), computed
    in ``dtype`` (default: the features')."""
    _check_count(features, k)
    return nearest_neighbours(features, k + 1, chunk, dtype)[0][:, k]


def _check_count(features: torch.Tensor, k: int) -> None:
    if len(features) <= k:
        raise MIMFlowError(f"precision/recall: need more than k={k} points, got {len(features)}")


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
    if not (all_finite(real) and all_finite(fake)):
        raise MIMFlowError(f"{what}: features contain NaN or Inf")
    return real, fake


def all_finite(features: torch.Tensor, chunk: int = CHUNK) -> bool:
    """No NaN or Inf, checked a block of rows at a time (a whole-array mask is N x d bytes: 0.1 GB at 50k x 2048)."""
    return all(bool(torch.isfinite(rows).all()) for rows in features.split(chunk))


FeatureArray = np.ndarray | torch.Tensor


RECALL_REACH = 16  # nearest other samples kept per sample for a bootstrap of recall (see SampleReach)
MAX_REACH_PAIRS = 20_000_000  # (sample, reference) pairs kept at most: 20 bytes each


@dataclass(frozen=True)
class SampleReach:
    """What a resample of the samples needs to recompute recall without another distance pass.

    A resample changes the samples' own balls: sample i's radius becomes the
    distance to its k-th nearest *other* drawn point, copies counted, its own
    copies not (the bootstrap's ties). That is found in ``neighbours`` /
    ``distances``: each sample's ``RECALL_REACH`` nearest other samples,
    nearest first (squared distances). No radius can exceed the farthest of
    them, so the references a ball can ever hold are in ``pairs`` ((sample,
    reference) rows) with their squared ``pair_distances``. ``pairs`` is None
    when more than ``MAX_REACH_PAIRS`` would be kept (``reason`` says so).
    """

    neighbours: np.ndarray
    distances: np.ndarray
    pairs: np.ndarray | None
    pair_distances: np.ndarray | None
    reason: str | None = None


def _other_points(values: torch.Tensor, columns: torch.Tensor, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop each row's own index from its neighbour list (the last entry where an exact duplicate displaced it)."""
    own = columns == torch.arange(len(columns), device=columns.device)[:, None]
    own[~own.any(dim=1), -1] = True
    keep = ~own
    return (columns[keep].reshape(len(columns), reach).cpu().numpy(),
            values[keep].reshape(len(values), reach).cpu().numpy())


def inside_masks(real: FeatureArray, fake: FeatureArray, k: int = K_NEAREST, chunk: int = CHUNK,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, reach: int = 0,
                 ) -> tuple[torch.Tensor, torch.Tensor, SampleReach | None]:
    """(each sample inside a reference ball, each reference inside a sample ball, and with ``reach`` > 0 the
    :class:`SampleReach` of the samples): the per-point tests whose shares are precision and recall (kept per
    point so a bootstrap can reweight them), from one pass over the distance blocks."""
    real, fake = feature_pair(real, fake, "precision/recall", device, dtype)
    real_radii = manifold_radii(real, k, chunk, dtype)
    _check_count(fake, k)
    reach = min(reach, len(fake) - 1)
    values, columns = nearest_neighbours(fake, max(k, reach) + 1, chunk, dtype)
    fake_radii, farthest = values[:, k], None
    if reach:
        neighbours, distances = _other_points(values[:, :reach + 1], columns[:, :reach + 1], reach)
        farthest = torch.from_numpy(distances[:, -1]).to(device)
    pairs, pair_distances, kept = [], [], 0
    fake_inside = torch.zeros(len(fake), dtype=torch.bool, device=device)
    real_inside = torch.zeros(len(real), dtype=torch.bool, device=device)
    for i, fake_rows in enumerate(fake.split(chunk)):
        fake_slice = slice(i * chunk, i * chunk + len(fake_rows))
        for j, real_rows in enumerate(real.split(chunk)):
            real_slice = slice(j * chunk, j * chunk + len(real_rows))
            d = squared_distances(fake_rows, real_rows, dtype)
            fake_inside[fake_slice] |= (d <= real_radii[real_slice]).any(dim=1)
            real_inside[real_slice] |= (d <= fake_radii[fake_slice, None]).any(dim=0)
            if farthest is not None and kept <= MAX_REACH_PAIRS:
                held = (d <= farthest[fake_slice, None]).nonzero()
                kept += len(held)
                pair_distances.append(d[held[:, 0], held[:, 1]].cpu().numpy())
                pairs.append((held.T + torch.tensor([[fake_slice.start], [real_slice.start]], device=device)).cpu()
                             .numpy())
    if not reach:
        return fake_inside, real_inside, None
    if kept > MAX_REACH_PAIRS:
        return fake_inside, real_inside, SampleReach(neighbours, distances, None, None, (
            f"more than {MAX_REACH_PAIRS:.0e} (sample, reference) pairs lie within the samples' "
            f"{reach}-nearest-neighbour reach, too many to keep"))
    return fake_inside, real_inside, SampleReach(neighbours, distances, np.concatenate(pairs, axis=1),
                                                 np.concatenate(pair_distances))


def _stored(x: torch.Tensor, device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
    narrower = x.is_floating_point() and x.dtype.itemsize <= dtype.itemsize
    return x.to(device, x.dtype if narrower else dtype)


def precision_recall(real: FeatureArray, fake: FeatureArray, k: int = K_NEAREST, chunk: int = CHUNK,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(precision, recall) of ``fake`` samples against ``real`` reference features (both (N, dim))."""
    return shares(*inside_masks(real, fake, k, chunk, device, dtype)[:2])


def shares(*masks: torch.Tensor) -> tuple[float, ...]:
    """The share of True in each mask: (precision, recall) from :func:`inside_masks`."""
    return tuple(mask.double().mean().item() for mask in masks)
