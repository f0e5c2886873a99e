"""UMAP of latent spaces with numbers for how separated their classes are (Fig. 4).

- :mod:`.metrics`: kNN accuracy (feature space and 2-D), trustworthiness, silhouette.
- :mod:`.embedding`: the seeded 2-D UMAP.
- :mod:`.run`: panels per checkpoint (or raw pixels), ``umap.json`` and ``umap.npz``; :mod:`.plot`: Figure 4.
"""
from .embedding import embed
from .metrics import separation_metrics
from .plot import plot_umap
from .run import PIXELS, umap_compare, write_umap_results

__all__ = ["PIXELS", "embed", "plot_umap", "separation_metrics", "umap_compare", "write_umap_results"]
