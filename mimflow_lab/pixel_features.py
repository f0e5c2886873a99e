"""Raw pixels as features: the floor every learned feature space is measured against.

The probe's pixel baseline and the UMAP's ``pixels`` panel both compare a
latent space with the images themselves; they take their rows from here so
that both baselines see exactly the same numbers.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from torch.utils.data import Dataset


def extract_pixel_features(dataset: Dataset, index: Iterable[int]) -> np.ndarray:
    """One flattened image per row (C * H * W values, as the dataset yields them), in the order of ``index``."""
    return np.stack([dataset[int(i)][0].flatten().numpy() for i in index])
