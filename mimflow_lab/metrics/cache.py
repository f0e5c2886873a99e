"""Inception features of reference batches, cached on disk so each reference is read through the network once.

A reference batch is the same for every model a user evaluates: ``ref-stats``
stores the features it computed while writing the batch, and ``fid`` and
``evaluate`` read them back instead of running the Inception again (at
~4 images/s on a CPU core that is minutes per 1000 images). Entries live
under ``$MIMFLOW_CACHE/reference``, keyed by the reference file's resolved
path, size and modification time and by the weights file, so a rewritten
reference or other weights never reuse stale features.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from mimflow_core.errors import MIMFlowError
from mimflow_core.npz import load_npz

from .inception_features import Features, npz_features
from .inception import FIDInception, WeightsSource
from .npz import write_npz


def _entry(reference: str | os.PathLike, weights: WeightsSource) -> tuple[Path, str]:
    from mimflow_lab.defaults import CACHE_ROOT

    stat = Path(reference).stat()
    key = f"{Path(reference).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{weights.path}"
    return CACHE_ROOT / "reference" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz", key


def store_reference_features(reference: str | os.PathLike, weights: WeightsSource, features: Features) -> None:
    """Remember ``features`` as those of the file ``reference`` as it is now (atomically)."""
    path, key = _entry(reference, weights)
    write_npz(path, {"key": np.array(key), **features.arrays()})


def reference_features(reference: str | os.PathLike, inception: FIDInception, weights: WeightsSource,
                       batch_size: int = 64) -> Features:
    """The features of ``reference``'s images: from the cache when it holds this file, else computed and stored."""
    path, key = _entry(reference, weights)
    if path.is_file() and (cached := _read_entry(path, key)) is not None:
        return cached
    features = npz_features(inception, reference, batch_size, desc="reference")
    try:
        store_reference_features(reference, weights, features)
    except MIMFlowError as e:  # a cache is a saving, not a result: a full or read-only cache only costs time
        warnings.warn(f"{e}; the reference features are not cached", stacklevel=2)
    return features


def _read_entry(path: Path, key: str) -> Features | None:
    """The features an entry holds for ``key``; None for another file's entry or, with a warning naming it, a
    damaged one (it is computed again and overwritten)."""
    try:
        data = load_npz(path)
    except MIMFlowError as e:
        warnings.warn(f"{e}; the cached reference features are discarded and computed again", stacklevel=3)
        return None
    if "key" in data and str(data["key"]) != key:
        return None
    if not {"key", "pool", "spatial"} <= data.keys() or len(data["pool"]) != len(data["spatial"]):
        warnings.warn(f"{path}: incomplete cached reference features, discarded and computed again", stacklevel=3)
        return None
    return Features.from_arrays({k: v for k, v in data.items() if k != "key"})
