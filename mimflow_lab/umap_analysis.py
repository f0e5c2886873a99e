"""UMAP of a latent space, with numbers for how separated its classes are (Fig. 4).

"Clearer clusters" is measured, not eyeballed, on every panel:

- ``knn_accuracy``: k-nearest-neighbour accuracy in the *original* feature
  space (stratified 5-fold cross-validation, mean ± std over folds): how
  often an image's neighbours share its class, independent of UMAP;
- ``knn_accuracy_2d``: the same in the 2-D embedding (what the eye sees);
- ``trustworthiness`` (Venna & Kaski; scikit-learn): whether the embedding's
  neighbours are neighbours in feature space (1 = no false neighbours), so
  a pretty picture that invents structure is caught;
- ``silhouette``: the classes' silhouette score in feature space.

Points are a class-balanced subset (``samples // classes`` per class, seeded).
The 2-D coordinates and labels go to ``umap.npz`` beside ``umap.json``, so
the figure is redrawn from the result files alone (:func:`plot_umap`).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mimflow_core.atomic import atomic_open, write_json
from mimflow_core.checkpoint import load_model
from mimflow_core.errors import MIMFlowError
from mimflow_lab.depth_features import (DEFAULT_CACHE, FeatureSettings, check_checkpoints, dist_info, extract_depth_features,
                                  parse_depths, select_indices)

PIXELS = "pixels"  # a panel of raw pixels instead of a checkpoint


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


def embed(features: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0) -> np.ndarray:
    """2-D UMAP embedding (Euclidean). A fixed ``random_state`` makes it reproducible (and single-threaded)."""
    import umap  # umap-learn; first import compiles with numba

    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, n_components=2, random_state=seed, n_jobs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        return reducer.fit_transform(features).astype(np.float32)


def umap_compare(panels: Sequence[str], *, what: str = "latent", samples: int = 5000, classes: int | None = None,
                 data: str = "digits", split: str = "test", mask_ratio: float = 0.0, pool: str = "flat",
                 weights: str = "ema", seed: int = 0, shard_size: int = 256, n_neighbors: int = 15,
                 min_dist: float = 0.1, knn_k: int = 10, cache: str | os.PathLike | None = DEFAULT_CACHE,
                 device: str | torch.device = "cpu", num_workers: int = 0,
                 progress: bool = True) -> tuple[dict, dict[str, np.ndarray]] | None:
    """One panel per checkpoint (or ``"pixels"``): embedding + separation metrics of feature ``what``.

    Returns ``(umap.json dict, umap.npz arrays)`` on rank 0, None elsewhere.
    """
    from mimflow_core.data import load_dataset
    from mimflow_lab.probe import check_labels, checkpoint_record

    paths = [p for p in panels if p != PIXELS]
    if not paths:
        raise MIMFlowError("umap: give at least one checkpoint (pixels is only a comparison panel)")
    infos = dict(zip(paths, check_checkpoints(paths, data, weights=weights)))
    config = next(iter(infos.values())).config
    names = {p: parse_depths(what, info.config) for p, info in infos.items()}
    if any(len(n) != 1 for n in names.values()):
        raise MIMFlowError(f"--what {what!r}: give one depth (latent, encoder or block:N)")
    dataset = load_dataset(data, config.image_size, split, channels=config.channels)
    index = select_indices(dataset.labels, samples, classes, seed)
    check_labels(dataset.labels[index], None, f"{data} {split} split")
    result = {"kind": "mimflow-lab umap", "version": 1, "data": data, "split": split, "what": what, "pool": pool,
              "mask_ratio": mask_ratio, "flow_label": -1, "samples": int(index.size), "classes": classes,
              "seed": seed, "umap": {"n_neighbors": n_neighbors, "min_dist": min_dist, "metric": "euclidean"},
              "knn_k": knn_k, "class_names": list(dataset.class_names), "panels": [],
              "embedding_file": "umap.npz"}
    arrays: dict[str, np.ndarray] = {}
    for i, panel in enumerate(panels):
        if panel == PIXELS:
            feats = np.stack([dataset[int(j)][0].flatten().numpy() for j in index])
            labels, record, label = dataset.labels[index], None, "raw pixels"
        else:
            model, info = load_model(panel, weights=weights, device=device)  # one model in memory at a time
            out = extract_depth_features(model, dataset, info.sha256, FeatureSettings(
                data=data, split=split, mask_ratio=mask_ratio, pool=pool, seed=seed, shard_size=shard_size,
                max_samples=samples, classes=classes, weights=info.weights),
                cache=cache, device=device, num_workers=num_workers, progress=progress)
            feats, labels, record, label = out[names[panel][0]], out["labels"], checkpoint_record(info), info.label
            del model  # before the next panel's checkpoint loads
        if dist_info()[0] != 0:
            continue
        emb = embed(feats, n_neighbors=n_neighbors, min_dist=min_dist, seed=seed)
        metrics = separation_metrics(feats, emb, labels, k=knn_k, seed=seed)
        result["panels"].append({"label": label, "checkpoint": record, "dim": int(feats.shape[1]), **metrics})
        arrays[f"embedding_{i}"], arrays[f"labels_{i}"] = emb, labels.astype(np.int64)
    if dist_info()[0] != 0:
        return None
    arrays["titles"] = np.array([p["label"] for p in result["panels"]])
    arrays["class_names"] = np.array(result["class_names"])
    for key in ("knn_accuracy", "trustworthiness"):
        arrays[key] = np.array([p[key] for p in result["panels"]])
    return result, arrays


def write_umap_results(result: dict, arrays: dict[str, np.ndarray], out: str | os.PathLike) -> dict[str, str]:
    """umap.npz (coordinates, labels), umap.json (metrics) and Figure 4 (umap.png/.pdf) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / result["embedding_file"], "wb") as f:
        np.savez(f, **arrays)
    write_json(out / "umap.json", result)
    return {"json": str(out / "umap.json"), "npz": str(out / result["embedding_file"]),
            **plot_umap(out / "umap.json", out / "umap")}


def plot_umap(umap_json_or_npz: str | os.PathLike, out_stem: str | os.PathLike) -> dict[str, str]:
    """Figure 4 from ``umap.json`` (with its npz) or from ``umap.npz`` alone: one panel per space, colour = class."""
    from mimflow_lab.plots import class_colors, new_figure, save_figure

    path = Path(umap_json_or_npz)
    if path.suffix == ".json":
        path = path.parent / json.loads(path.read_text())["embedding_file"]
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise MIMFlowError(f"{path}: cannot read UMAP embedding ({e})") from None
    titles, class_names = list(arrays["titles"]), list(arrays["class_names"])
    colours = class_colors(len(class_names))
    fig, axes = new_figure(len(titles), width=3.2, height=3.2)
    axes = np.atleast_1d(axes)
    for i, (ax, title) in enumerate(zip(axes, titles)):
        emb, labels = arrays[f"embedding_{i}"], arrays[f"labels_{i}"]
        for c in np.unique(labels):
            pts = emb[labels == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=3, color=colours[c % len(colours)], alpha=0.8, linewidths=0,
                       label=class_names[c], rasterized=True)
        ax.set_title(f"({chr(97 + i)}) {title}\nkNN acc. {arrays['knn_accuracy'][i]:.1f}%, "
                     f"trustworthiness {arrays['trustworthiness'][i]:.3f}", fontsize=8)
        ax.set_xlabel("UMAP 1 (a.u.)")
        ax.set_ylabel("UMAP 2 (a.u.)")
        ax.grid(False)
        ax.set_aspect("equal", adjustable="datalim")
    if len(class_names) <= 20:
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=3,
                        title="class", fontsize=7)
    return save_figure(fig, out_stem)
