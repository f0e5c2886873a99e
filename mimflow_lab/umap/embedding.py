"""The 2-D UMAP embedding drawn in Figure 4."""
from __future__ import annotations

import warnings

import numpy as np


def embed(features: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0) -> np.ndarray:
    """2-D UMAP embedding (Euclidean). A fixed ``random_state`` makes it reproducible (and single-threaded)."""
    import umap  # umap-learn (the top-level package, not this one); first import compiles with numba

    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, n_components=2, random_state=seed, n_jobs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        return reducer.fit_transform(features).astype(np.float32)
