"""Probes over checkpoints x inference mask ratios x depths (Fig. 6, Table 5a), and their result files."""
from __future__ import annotations

import csv
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from mimflow_core.atomic import atomic_open, write_json
from mimflow_core.checkpoint import CheckpointInfo, load_model
from mimflow_core.data import ImageDataset, load_dataset
from mimflow_lab.depth_features import (DEFAULT_CACHE, FeatureSettings, check_checkpoints, dist_info,
                                        extract_depth_features, needs_layers, parse_depths, select_indices)
from mimflow_lab.pixel_features import extract_pixel_features

from .plot import plot_probe
from .protocol import ProbeResult, check_labels, linear_probe, linear_probes
from .settings import ProbeSettings

CSV_FIELDS = ("checkpoint", "checkpoint_path", "variant", "train_mask_ratio", "mask_ratio", "depth",
              "accuracy_mean", "accuracy_std", "accuracies", "weight_decays", "dim", "num_train", "num_test")


def probe_checkpoints(paths: Sequence[str | os.PathLike], *, depths: str | Sequence[str] = "all",
                      mask_ratios: Sequence[float] = (0.0,), data: str = "digits", layers: bool = False,
                      pool: str = "mean", weights: str = "ema", seed: int = 0, shard_size: int = 256,
                      max_train: int | None = None, pixel_baseline: bool = False,
                      cache: str | os.PathLike | None = DEFAULT_CACHE, device: str | torch.device = "cpu",
                      num_workers: int = 0, settings: ProbeSettings | None = None,
                      progress: bool = True) -> dict | None:
    """Probe accuracy for every checkpoint x inference mask ratio x depth (the data of Fig. 6).

    One feature pass per (checkpoint, mask ratio, split) serves every depth.
    Under ``torchrun`` all ranks share the feature passes and rank 0 alone
    trains the probes and returns the result (the others return None).
    """
    settings = settings or ProbeSettings(device=str(device))
    infos = check_checkpoints(paths, data, weights=weights)
    config = infos[0].config
    names = parse_depths(depths, config, layers)  # validate before any work ...
    for info in infos[1:]:
        parse_depths(names, info.config, True)  # ... on every checkpoint
    ratios = [float(r) for r in mask_ratios]
    splits = {s: load_dataset(data, config.image_size, s, channels=config.channels) for s in ("train", "test")}
    check_labels(splits["train"].labels, splits["train"].num_classes, f"{data} train split")
    num_classes = splits["train"].num_classes
    rank, _ = dist_info()
    rows, checkpoints = [], []
    for checked in infos:
        model, info = load_model(checked.path, weights=weights, device=device)  # one model in memory at a time
        checkpoints.append(checkpoint_record(info))
        feats = {(r, s): extract_depth_features(model, ds, info.sha256, FeatureSettings(
            data=data, split=s, mask_ratio=r, pool=pool, layers=needs_layers(names), seed=seed,
            shard_size=shard_size, max_samples=max_train if s == "train" else None, weights=info.weights),
            cache=cache, device=device, num_workers=num_workers, progress=progress)
            for r in ratios for s, ds in splits.items()}
        del model  # before the next checkpoint loads, so that two never sit in memory together
        if rank != 0:
            continue
        # the same images at every mask ratio (the subset does not depend on it): one batched probe run
        labels = {s: feats[ratios[0], s]["labels"] for s in splits}
        tasks = [(r, name) for r in ratios for name in names]
        results = linear_probes([feats[r, "train"][name] for r, name in tasks], labels["train"],
                                [feats[r, "test"][name] for r, name in tasks], labels["test"],
                                num_classes=num_classes, settings=settings, progress=progress)
        for (r, name), res in zip(tasks, results):
            rows.append({"checkpoint": info.label, "checkpoint_path": str(info.path), "variant": info.variant,
                         "train_mask_ratio": info.train.get("mask_ratio"), "mask_ratio": r, "depth": name,
                         **res.as_dict()})
    if rank != 0:
        return None
    result = {
        "kind": "mimflow-lab probe", "version": 1, "data": data, "depths": names, "mask_ratios": ratios,
        "pool": pool, "feature_seed": seed, "flow_label": -1, "weights": weights,
        "probe": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
        "checkpoints": checkpoints, "results": rows,
    }
    if pixel_baseline:
        result["pixel_baseline"] = pixel_probe(splits["train"], splits["test"], settings, max_train, seed).as_dict()
    return result


def checkpoint_record(info: CheckpointInfo) -> dict:
    """What the result files say about a checkpoint (enough to find it again)."""
    return {"label": info.label, "path": str(info.path), "sha256": info.sha256, "step": info.step,
            "phase": info.phase, "variant": info.variant, "train_mask_ratio": info.train.get("mask_ratio"),
            "weights": info.weights}


def pixel_probe(train: ImageDataset, test: ImageDataset, settings: ProbeSettings, max_train: int | None,
                seed: int) -> ProbeResult:
    """The same probe on raw pixels: the floor a latent space should clear."""
    idx = select_indices(train.labels, max_train, None, seed)
    return linear_probe(extract_pixel_features(train, idx), train.labels[idx],
                        extract_pixel_features(test, range(len(test))), test.labels,
                        num_classes=train.num_classes, settings=settings)


def write_probe_results(result: dict, out: str | os.PathLike) -> dict[str, str]:
    """probe.json, probe.csv and Figure 6 (probe_depth.png/.pdf) under ``out``; returns their paths."""
    out = Path(out)
    files = {"json": str(out / "probe.json"), "csv": str(out / "probe.csv")}
    write_json(files["json"], result)
    with atomic_open(files["csv"], "w") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in result["results"]:
            writer.writerow({k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()})
    files |= plot_probe(result, out / "probe_depth")
    return files
