"""Reference batches in ADM's format, built from any dataset this project reads.

Images are streamed once: each batch goes through the Inception and straight
into the output's ``arr_0``; the statistics, fitted to the features, follow,
and the features go to the reference cache (:mod:`.cache`) for ``fid`` and
``evaluate``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from mimflow_core.atomic import write_json
from mimflow_core.errors import MIMFlowError

from .cache import store_reference_features
from .inception_features import Features, inception_features, to_uint8
from .frechet import gaussian_stats
from .inception import load_inception
from .npz import MIN_IMAGES, open_images, read_array, write_npz
from .precision_recall import K_NEAREST


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """All indices, or a seeded random ``limit`` of them in ascending order (so files stream forward)."""
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 2:
        raise MIMFlowError(f"--limit {limit}: need at least 2 images")
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _npz_batches(reader, keep: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    start = 0
    for batch in reader.batches(batch_size):
        chosen = keep[(keep >= start) & (keep < start + len(batch))] - start
        start += len(batch)
        if len(chosen):
            yield batch[chosen]


def _dataset_batches(dataset, keep: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for begin in range(0, len(keep), batch_size):
        images = torch.stack([dataset[int(i)][0] for i in keep[begin:begin + batch_size]])
        yield to_uint8(images).numpy()


def build_reference(
    source: str, out: str | os.PathLike, *, size: int | None = None, split: str = "all", limit: int | None = None,
    seed: int = 0, inception_path: str | None = None, batch_size: int = 64, device: str = "cpu",
) -> dict:
    """Write ``source`` (ADM npz, image directory or "digits") as a reference batch; returns a summary."""
    if str(source).endswith(".npz"):
        reader = open_images(source)
        labels = read_array(source, "arr_1")
        keep = _subset(len(reader), limit, seed)
        shape = reader.shape[1:]
        batches = _npz_batches(reader, keep, batch_size)
    else:
        from mimflow_core.data import load_dataset

        if size is None:
            raise MIMFlowError(f"--size: required to read {source} (images are centre-cropped to it)")
        dataset = load_dataset(source, size, split)
        labels = dataset.labels
        keep = _subset(len(dataset), limit, seed)
        shape = (size, size, 3)
        batches = _dataset_batches(dataset, keep, batch_size)
    if len(keep) < MIN_IMAGES:
        raise MIMFlowError(f"{source}: {len(keep)} image(s) kept; a reference needs at least {MIN_IMAGES} "
                           f"(precision and recall use each image's {K_NEAREST} nearest neighbours)")
    inception, weights = load_inception(inception_path, device=device)
    parts: list[Features] = []

    def features_then_images() -> Iterator[np.ndarray]:
        with tqdm(total=len(keep), desc="reference", unit="img", file=sys.stderr) as bar:
            for batch in batches:
                parts.append(inception_features(inception, batch))
                bar.update(len(batch))
                yield batch

    def statistics() -> dict[str, np.ndarray]:
        features = Features.concatenate(parts)
        mu, sigma = gaussian_stats(features.pool)
        mu_s, sigma_s = gaussian_stats(features.spatial)
        arrays = {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}
        return arrays if labels is None else {"arr_1": np.asarray(labels)[keep], **arrays}

    write_npz(out, statistics, streamed={"arr_0": ((len(keep), *shape), np.uint8, features_then_images())})
    store_reference_features(out, weights, Features.concatenate(parts))  # fid and evaluate need not rerun them
    summary = {"source": str(source), "out": str(out), "num_images": int(len(keep)), "image_shape": list(shape),
               "split": split if not str(source).endswith(".npz") else None, "limit": limit, "seed": seed,
               "inception_weights": weights.describe()}
    write_json(Path(str(out) + ".json"), summary)
    return summary
