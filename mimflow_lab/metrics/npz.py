"""ADM-format npz files: stream image arrays in, write them out, validate both.

A reference or sample batch holds ``arr_0`` (uint8, N x H x W x 3, 0..255)
and optionally labels ``arr_1`` and precomputed statistics ``mu``, ``sigma``
(pool_3, 2048) and ``mu_s``, ``sigma_s`` (spatial, 2023). A 50k x 256^2
batch is 9.8 GB, so ``arr_0`` is read a batch of rows at a time straight from
the zip member (stored or deflated, as ``np.savez``/``savez_compressed``
write it) and written the same way.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from mimflow_core.atomic import atomic_open
from mimflow_core.errors import MIMFlowError
from mimflow_core.npz import NpzArrayReader, load_npz

from .inception import POOL_DIM, SPATIAL_DIM
from .precision_recall import K_NEAREST

# the fewest images every ADM metric can be computed from: precision and recall need each image's K_NEAREST
# neighbours besides itself (a Gaussian fit needs only 2)
MIN_IMAGES = K_NEAREST + 1

STATS_SHAPES = {"mu": (POOL_DIM,), "sigma": (POOL_DIM, POOL_DIM), "mu_s": (SPATIAL_DIM,),
                "sigma_s": (SPATIAL_DIM, SPATIAL_DIM)}


def open_images(path: str | os.PathLike) -> NpzArrayReader:
    """Open ``arr_0`` and check it is an ADM image batch: uint8 N x H x W x 3 with values over 0..255."""
    reader = NpzArrayReader(path, "arr_0")
    problem = None
    if reader.dtype != np.uint8:
        problem = f"arr_0 has dtype {reader.dtype}; ADM batches are uint8 in 0..255"
        if reader.dtype.kind == "f" and len(reader):
            head = reader.read(min(len(reader), 64))
            problem += f" (values here span [{head.min():.3g}, {head.max():.3g}]; convert with " \
                       "np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8) for [-1, 1] images)"
    elif len(reader.shape) != 4 or reader.shape[-1] != 3:
        problem = f"arr_0 has shape {reader.shape}; expected N x H x W x 3 (NHWC, RGB)"
    elif len(reader) == 0 or min(reader.shape[1:3]) < 1:
        problem = f"arr_0 holds no images (shape {reader.shape})"
    elif len(reader) < MIN_IMAGES:
        problem = (f"arr_0 holds {len(reader)} image(s); the ADM metrics need at least {MIN_IMAGES} (precision and "
                   f"recall use each image's {K_NEAREST} nearest neighbours)")
    if problem is None:
        head = NpzArrayReader(path, "arr_0")  # a second handle, so the first keeps its position
        with head:
            n = min(len(head), 256)
            peak = head.read(n).max()
        if peak == 0:
            problem = (f"every value of the first {n} images is 0 (all black): nothing to measure; if they were "
                       "floats in [0, 1] cast to uint8, multiply by 255 before the cast")
        elif peak == 1:
            problem = f"the first {n} images never exceed 1; they look scaled to [0, 1] instead of 0..255"
    if problem is not None:
        reader.close()
        raise MIMFlowError(f"{reader.path}: {problem}")
    return reader


def size_mismatch(reference: str | os.PathLike, reference_size: tuple[int, int], samples: str,
                  samples_size: tuple[int, int]) -> str | None:
    """A warning when samples and reference differ in resolution: both are resized to 299 px for the Inception,
    so the numbers come out, but they then measure the resize as much as the model (compare at one resolution)."""
    if tuple(reference_size) == tuple(samples_size):
        return None
    return (f"{samples} is {samples_size[0]}x{samples_size[1]} px but the reference {reference} is "
            f"{reference_size[0]}x{reference_size[1]} px; the metrics then compare resolutions as much as images "
            "(build the reference at the samples' size with `mimflow-lab ref-stats --size`)")


def read_array(path: str | os.PathLike, name: str) -> np.ndarray | None:
    """A small array (labels, statistics) from an npz, validated like the images; None when absent."""
    return load_npz(path, [name]).get(name)


def read_reference_stats(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The precomputed ``mu``/``sigma``/``mu_s``/``sigma_s`` present in a reference batch, validated."""
    stats = {}
    for name, shape in STATS_SHAPES.items():
        value = read_array(path, name)
        if value is None:
            continue
        if value.shape != shape or value.dtype.kind not in "fiu":
            raise MIMFlowError(f"{path}: {name} has shape {value.shape} of {value.dtype}, expected {shape} numbers")
        if not np.isfinite(value).all():
            raise MIMFlowError(f"{path}: {name} contains NaN or Inf")
        stats[name] = value.astype(np.float64)
    return stats


def write_npz(
    path: str | os.PathLike,
    arrays: dict[str, np.ndarray] | Callable[[], dict[str, np.ndarray]],
    streamed: dict[str, tuple[tuple[int, ...], np.dtype, Iterable[np.ndarray]]] | None = None,
) -> None:
    """Write an npz atomically; ``streamed`` arrays arrive as (shape, dtype, row batches) and never sit in memory.

    ``arrays`` may be a function, called after the streams are written: for
    values computed from what was streamed (statistics of the images).
    """
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, (shape, dtype, batches) in (streamed or {}).items():
            _write_streamed(z, name, shape, np.dtype(dtype), batches)
        for name, array in (arrays() if callable(arrays) else arrays).items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def _write_streamed(z: zipfile.ZipFile, name: str, shape: tuple[int, ...], dtype: np.dtype,
                    batches: Iterable[np.ndarray]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    rows = 0
    with z.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, header)
        for batch in batches:
            batch = np.ascontiguousarray(batch, dtype=dtype)
            if batch.shape[1:] != tuple(shape[1:]):
                raise MIMFlowError(f"{name}: batch of shape {batch.shape} does not fit {shape}")
            member.write(batch.tobytes())
            rows += len(batch)
    if rows != shape[0]:
        raise MIMFlowError(f"{name}: wrote {rows} rows, expected {shape[0]}")
