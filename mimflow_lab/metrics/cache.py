"""Inception features of reference batches, cached on disk so each reference is read through the network once.

A reference batch is the same for every model a user evaluates: ``ref-stats``
stores the features it computed while writing the batch, and ``fid`` and
``evaluate`` read them back instead of running the Inception again (at
~4 images/s on a CPU core that is minutes per 1000 images). Entries live
under ``$MIMFLOW_CACHE/reference``, keyed by the reference file's resolved
path, size and modification time and by the weights file (for an
``--encoder``: its SHA-256 and preset), so a rewritten reference, other
weights or another preprocessing never reuse stale features.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from mimflow_core.errors import MIMFlowError
from mimflow_core.npz import load_npz

from .encoders import Encoder, npz_encoder_features
from .inception_features import Features, npz_features
from .inception import FIDInception, WeightsSource
from .npz import write_npz


def _entry(reference: str | os.PathLike, extractor: str) -> tuple[Path, str]:
    """The cache file and key of ``reference``'s features by ``extractor`` (the Inception weights' path, or an
    encoder's SHA-256 and preset)."""
    from mimflow_lab.defaults import CACHE_ROOT

    stat = Path(reference).stat()
    key = f"{Path(reference).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{extractor}"
    return CACHE_ROOT / "reference" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz", key


def store_reference_features(reference: str | os.PathLike, weights: WeightsSource, features: Features) -> None:
    """Remember ``features`` as those of the file ``reference`` as it is now (atomically)."""
    _store(reference, str(weights.path), features.arrays())


def _store(reference: str | os.PathLike, extractor: str, arrays: dict[str, np.ndarray]) -> None:
    path, key = _entry(reference, extractor)
    write_npz(path, {"key": np.array(key), **arrays})


def _cached(reference: str | os.PathLike, extractor: str, compute: Callable[[], dict[str, np.ndarray]],
            required: frozenset[str]) -> dict[str, np.ndarray]:
    """The ``required`` arrays of ``reference`` by ``extractor``: from the cache when it holds this file, else
    ``compute()``d and stored (a cache that cannot be written is a warning: it only costs time)."""
    path, key = _entry(reference, extractor)
    if path.is_file() and (cached := _read_entry(path, key, required)) is not None:
        return cached
    arrays = compute()
    try:
        _store(reference, extractor, arrays)
    except MIMFlowError as e:
        warnings.warn(f"{e}; the reference features are not cached", stacklevel=3)
    return arrays


def reference_features(reference: str | os.PathLike, inception: FIDInception, weights: WeightsSource,
                       batch_size: int = 64) -> Features:
    """The features of ``reference``'s images: from the cache when it holds this file, else computed and stored."""
    arrays = _cached(reference, str(weights.path),
                     lambda: npz_features(inception, reference, batch_size, desc="reference").arrays(),
                     frozenset({"pool", "spatial"}))
    return Features.from_arrays(arrays)


def reference_encoder_features(reference: str | os.PathLike, encoder: Encoder, batch_size: int = 64) -> np.ndarray:
    """``encoder``'s (N, d) features of ``reference``'s images, cached under its SHA-256 and preset."""
    arrays = _cached(reference, encoder.cache_key,
                     lambda: {"features": npz_encoder_features(encoder, reference, batch_size)},
                     frozenset({"features"}))
    return arrays["features"]


def _read_entry(path: Path, key: str, required: frozenset[str]) -> dict[str, np.ndarray] | None:
    """The arrays an entry holds for ``key``; None for another file's entry or, with a warning naming it, a
    damaged one (it is computed again and overwritten)."""
    try:
        data = load_npz(path)
    except MIMFlowError as e:
        warnings.warn(f"{e}; the cached reference features are discarded and computed again", stacklevel=4)
        return None
    if "key" in data and str(data["key"]) != key:
        return None
    if not {"key", *required} <= data.keys() or len({len(data[k]) for k in required}) != 1:
        warnings.warn(f"{path}: incomplete cached reference features, discarded and computed again", stacklevel=4)
        return None
    return {k: v for k, v in data.items() if k != "key"}
