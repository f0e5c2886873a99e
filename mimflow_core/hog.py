"""Per-patch HOG targets for the auxiliary head (MaskFeat-style, scikit-image conventions).

Histograms of oriented gradients follow ``skimage.feature.hog`` with
``cells_per_block=(1, 1)``, ``block_norm="L2"``: central-difference gradients
(zero on the border rows/columns), per pixel the channel with the largest
gradient magnitude, unsigned orientations in [0, 180) hard-binned into
``bins`` equal bins, magnitude-weighted and averaged over square cells, then
each cell divided by ``sqrt(|h|^2 + eps^2)``. A patch's target is the
concatenation of its cells' histograms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mimflow_core.layers import patchify


def hog_cells(images: torch.Tensor, cell_size: int, bins: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """HOG of (B, C, H, W) images: (B, bins, H // cell_size, W // cell_size), L2-normalised per cell."""
    g_row = torch.zeros_like(images)
    g_col = torch.zeros_like(images)
    g_row[:, :, 1:-1, :] = images[:, :, 2:, :] - images[:, :, :-2, :]
    g_col[:, :, :, 1:-1] = images[:, :, :, 2:] - images[:, :, :, :-2]
    magnitude = torch.hypot(g_row, g_col)
    strongest = magnitude.argmax(dim=1, keepdim=True)  # first channel on ties, as numpy's argmax
    g_row, g_col, magnitude = (t.gather(1, strongest) for t in (g_row, g_col, magnitude))
    orientation = torch.rad2deg(torch.atan2(g_row, g_col)).remainder(180.0)
    bin_index = torch.div(orientation, 180.0 / bins, rounding_mode="floor").long().clamp_(0, bins - 1)
    hist = torch.zeros(images.shape[0], bins, *images.shape[2:], dtype=images.dtype, device=images.device)
    hist.scatter_(1, bin_index, magnitude)
    H, W = images.shape[-2:]
    hist = F.avg_pool2d(hist[..., : H - H % cell_size, : W - W % cell_size], cell_size)
    return hist / torch.sqrt(hist.pow(2).sum(dim=1, keepdim=True) + eps * eps)


def hog_cell_size(patch_size: int) -> int:
    """Cells of 8 pixels (MaskFeat) when the patch allows, else one cell per patch."""
    return 8 if patch_size % 8 == 0 else patch_size


def hog_dim(patch_size: int, bins: int = 9) -> int:
    cells_per_side = patch_size // hog_cell_size(patch_size)
    return cells_per_side * cells_per_side * bins


def hog_patch_targets(images: torch.Tensor, patch_size: int, bins: int = 9) -> torch.Tensor:
    """(B, N, hog_dim) per-patch HOG targets, patches in the encoder's row-major order."""
    cell = hog_cell_size(patch_size)
    cells = hog_cells(images.float(), cell, bins)
    return patchify(cells, patch_size // cell)

