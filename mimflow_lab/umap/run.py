"""Figure 4's protocol: one panel per checkpoint (or raw pixels), embedded and measured, and its result files.

Points are a class-balanced subset (``samples // classes`` per class, seeded).
The 2-D coordinates and labels go to ``umap.npz`` beside ``umap.json``, so
the figure is redrawn from the result files alone (:func:`~.plot.plot_umap`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mimflow_core.atomic import atomic_open, write_json
from mimflow_core.checkpoint import load_model
from mimflow_core.data import load_dataset
from mimflow_core.errors import MIMFlowError
from mimflow_lab.depth_features import (DEFAULT_CACHE, FeatureSettings, check_checkpoints, dist_info,
                                        extract_depth_features, parse_depths, select_indices)
from mimflow_lab.pixel_features import extract_pixel_features
from mimflow_lab.probe import check_labels, checkpoint_record

from .embedding import embed
from .metrics import separation_metrics
from .plot import plot_umap

PIXELS = "pixels"  # a panel of raw pixels instead of a checkpoint


def check_neighbourhoods(points: int, knn_k: int, n_neighbors: int) -> None:
    """Refuse neighbourhoods the point count cannot hold, before any feature is extracted: trustworthiness needs
    k below half the points (and so every kNN fold holds more than k), UMAP fewer neighbours than points."""
    if 2 * knn_k >= points:
        raise MIMFlowError(f"--knn {knn_k}: needs fewer than half of the {points} points; lower it or raise --samples")
    if n_neighbors >= points:
        raise MIMFlowError(f"--neighbors {n_neighbors}: UMAP needs fewer neighbours than the {points} points; "
                           "lower it or raise --samples")


def umap_compare(panels: Sequence[str], *, what: str = "latent", samples: int = 5000, classes: int | None = None,
                 data: str = "digits", split: str = "test", mask_ratio: float = 0.0, pool: str = "flat",
                 weights: str = "ema", seed: int = 0, shard_size: int = 256, n_neighbors: int = 15,
                 min_dist: float = 0.1, knn_k: int = 10, cache: str | os.PathLike | None = DEFAULT_CACHE,
                 device: str | torch.device = "cpu", num_workers: int = 0,
                 progress: bool = True) -> tuple[dict, dict[str, np.ndarray]] | None:
    """One panel per checkpoint (or ``"pixels"``): embedding + separation metrics of feature ``what``.

    Returns ``(umap.json dict, umap.npz arrays)`` on rank 0, None elsewhere.
    """
    paths = [p for p in panels if p != PIXELS]
    if not paths:
        raise MIMFlowError("umap: give at least one checkpoint (pixels is only a comparison panel)")
    infos = dict(zip(paths, check_checkpoints(paths, data, weights=weights)))
    config = next(iter(infos.values())).config
    names = {p: parse_depths(what, info.config, option="--what") for p, info in infos.items()}
    if any(len(n) != 1 for n in names.values()):
        raise MIMFlowError(f"--what {what!r}: give one depth (latent, encoder or block:N)")
    dataset = load_dataset(data, config.image_size, split, channels=config.channels)
    index = select_indices(dataset.labels, samples, classes, seed)
    check_labels(dataset.labels[index], None, f"{data} {split} split")
    check_neighbourhoods(index.size, knn_k, n_neighbors)
    result = {"kind": "mimflow-lab umap", "version": 1, "data": data, "split": split, "what": what, "pool": pool,
              "mask_ratio": mask_ratio, "flow_label": -1, "samples": int(index.size), "classes": classes,
              "seed": seed, "umap": {"n_neighbors": n_neighbors, "min_dist": min_dist, "metric": "euclidean"},
              "knn_k": knn_k, "class_names": list(dataset.class_names), "panels": [],
              "embedding_file": "umap.npz"}
    arrays: dict[str, np.ndarray] = {}
    for i, panel in enumerate(panels):
        if panel == PIXELS:
            feats = extract_pixel_features(dataset, index)
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
    with atomic_open(out / result["embedding_file"], "wb") as f:
        np.savez(f, **arrays)
    write_json(out / "umap.json", result)
    return {"json": str(out / "umap.json"), "npz": str(out / result["embedding_file"]),
            **plot_umap(out / "umap.json", out / "umap")}
