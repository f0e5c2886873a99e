"""How separated a space's classes are, measured rather than eyeballed on every UMAP panel.

- ``knn_accuracy``: k-nearest-neighbour accuracy in the *original* feature
  space (stratified 5-fold cross-validation, mean ± std over folds): how
  often an image's neighbours share its class, independent of UMAP;
- ``knn_accuracy_2d``: the same in the 2-D embedding (what the eye sees);
- ``trustworthiness`` (Venna & Kaski; scikit-learn): whether the embedding's
  neighbours are neighbours in feature space (1 = no false neighbours), so
  a pretty picture that invents structure is caught;
- ``silhouette``: the classes' silhouette score in feature space.
"""
from __future__ import annotations

import numpy as np

from mimflow_core.errors import MIMFlowError


def separation_metrics(features: np.ndarray, embedding: np.ndarray, labels: np.ndarray, *, k: int = 10,
                       folds: int = 5, seed: int = 0) -> dict[str, float]:
    """kNN accuracy (%) in feature space and in the embedding, trustworthiness, silhouette."""
    from sklearn.manifold import trustworthiness
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    folds = min(folds, int(np.bincount(labels).min()))
    if folds < 2:
        raise MIMFlowError("--samples: every class needs at least 2 images for cross-validated kNN accuracy")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    knn = KNeighborsClassifier(n_neighbors=k)
    high = 100.0 * cross_val_score(knn, features, labels, cv=cv)
    low = 100.0 * cross_val_score(knn, embedding, labels, cv=cv)
    return {
        "knn_accuracy": float(high.mean()), "knn_accuracy_std": float(high.std(ddof=1)),
        "knn_accuracy_2d": float(low.mean()), "knn_accuracy_2d_std": float(low.std(ddof=1)),
        "trustworthiness": float(trustworthiness(features, embedding, n_neighbors=k)),
        "silhouette": float(silhouette_score(features, labels)),
    }
