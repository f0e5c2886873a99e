"""Inception features of image batches, and the conversions every producer shares.

Images travel as uint8 NHWC (ADM's on-disk layout): generated images are
quantised the same way before the Inception sees them, so features computed
on the fly equal those of the same samples saved to an npz and re-read.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from mimflow_core.data import as_rgb

from .inception import FIDInception
from .npz import open_images


@dataclass
class Features:
    """Per-image Inception features (float32, as the network outputs them)."""

    pool: np.ndarray  # (N, 2048)
    spatial: np.ndarray  # (N, 2023), NHWC order
    logits: np.ndarray | None  # (N, 1008), None without the classifier

    def __len__(self) -> int:
        return len(self.pool)

    @classmethod
    def concatenate(cls, parts: list["Features"]) -> "Features":
        has_logits = all(p.logits is not None for p in parts)
        return cls(
            np.concatenate([p.pool for p in parts]),
            np.concatenate([p.spatial for p in parts]),
            np.concatenate([p.logits for p in parts]) if has_logits else None,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The features as named arrays, for a shard or cache file."""
        out = {"pool": self.pool, "spatial": self.spatial}
        return out if self.logits is None else {**out, "logits": self.logits}

    @classmethod
    def from_arrays(cls, arrays) -> "Features":
        logits = arrays["logits"] if "logits" in arrays else None
        return cls(np.asarray(arrays["pool"]), np.asarray(arrays["spatial"]), logits)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) in [-1,1] -> uint8 NHWC RGB, rounding to the nearest level (as saving a PNG would).

    Greyscale images (C = 1) become three equal channels (:func:`mimflow_core.data.as_rgb`): the Inception,
    ADM's npz format and the reference batches are RGB.
    """
    return (as_rgb(images) * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@torch.inference_mode()
def inception_features(inception: FIDInception, images_nhwc: np.ndarray | torch.Tensor) -> Features:
    """Features of one uint8 NHWC batch."""
    device = inception.Conv2d_1a_3x3.conv.weight.device
    x = torch.as_tensor(images_nhwc).to(device).permute(0, 3, 1, 2)
    out = inception(x)
    logits = None if out.logits is None else out.logits.float().cpu().numpy()
    return Features(out.pool.float().cpu().numpy(), out.spatial.float().cpu().numpy(), logits)


def with_progress(batches: Iterable[np.ndarray], total: int | None, desc: str) -> Iterator[np.ndarray]:
    """``batches`` as they are, counting their images on a progress bar on stderr (every feature pass)."""
    with tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def extract_inception_features(
    inception: FIDInception, batches: Iterable[np.ndarray], total: int | None = None, desc: str = "inception"
) -> Features:
    """Features of a stream of uint8 NHWC batches (progress on stderr)."""
    return Features.concatenate([inception_features(inception, b) for b in with_progress(batches, total, desc)])


def npz_features(inception: FIDInception, path, batch_size: int = 64, desc: str | None = None) -> Features:
    """Features of an ADM npz's ``arr_0``, streamed ``batch_size`` images at a time."""
    with open_images(path) as reader:
        return extract_inception_features(inception, reader.batches(batch_size), total=len(reader), desc=desc or str(path))
