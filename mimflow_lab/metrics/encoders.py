"""Other representations than the Inception: a TorchScript encoder the user provides (``--encoder``).

Inception features are known to miss what newer encoders see (Stein et al.
2023, dgm-eval: DINOv2 ViT-L/14 features rank models closer to people), so
``evaluate`` and ``fid`` also compute FD, precision/recall, density/coverage
and KID in the feature space of any encoder the user has as a TorchScript
file. Nothing is downloaded: the user names the file, and because
``torch.jit.load`` runs the file's graph, only files named explicitly are
loaded. torch.hub directories are refused: ``torch.hub.load(..., source=
'local')`` executes the directory's ``hubconf.py`` (arbitrary Python) and
DINOv2's downloads its weights; ``torch.jit.trace`` turns such a model into a
file once (README). The encoder's identity (path, SHA-256, preprocessing) is
written into the result, and its reference features are cached under that
SHA-256 and preset (:mod:`.cache`).

A spec is ``[NAME=]PATH[:PRESET]``; the presets (:data:`mimflow_lab.options.
ENCODER_PRESETS`) turn uint8 NHWC images into float NCHW RGB in [0, 1],
resized (bicubic, antialiased as PIL's is, clamped to [0, 1] as PIL's uint8
output is) and normalised with the encoder's mean and std.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from mimflow_core.checkpoint import file_sha256
from mimflow_core.errors import MIMFlowError
from mimflow_lab.options import ENCODER_PRESETS

from .inception import is_torchscript, load_torchscript
from .inception_features import with_progress
from .npz import open_images

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_PROBE_IMAGES = 2


@dataclass(frozen=True)
class EncoderSpec:
    """What ``--encoder`` names: the result's key, the file and the preprocessing preset."""

    name: str
    path: Path
    preset: str


def parse_encoder_spec(spec: str) -> EncoderSpec:
    """``[NAME=]PATH[:PRESET]`` -> :class:`EncoderSpec`, refused in one line (missing file, unknown preset)."""
    name, eq, rest = spec.partition("=")
    if not eq or "/" in name:  # "a/b=c.pt" is a path holding "=", not a name
        name, rest = "", spec
    path, colon, preset = rest.rpartition(":")
    if not colon or "/" in preset or "." in preset:  # "dir:x/enc.pt" and "enc:v1.pt" are paths, not presets
        path, preset = rest, "none"
    if preset not in ENCODER_PRESETS:
        raise MIMFlowError(f"--encoder {spec}: unknown preset {preset!r}; choose one of "
                           f"{', '.join(ENCODER_PRESETS)}")
    path = Path(path)
    name = name or path.stem
    if not _NAME.fullmatch(name):
        raise MIMFlowError(f"--encoder {spec}: name {name!r} must be letters, digits, '_', '.' or '-'")
    if path.is_dir():
        raise MIMFlowError(f"--encoder {spec}: {path} is a directory (a torch.hub repository?); its hubconf.py "
                           "would run Python and may download, so pass a TorchScript file made with "
                           "torch.jit.trace (README, 'Other representations')")
    if not path.is_file():
        raise MIMFlowError(f"--encoder {spec}: no such file {path}; provide a TorchScript encoder file "
                           "(e.g. DINOv2 ViT-L/14 exported with torch.jit.trace, README)")
    return EncoderSpec(name, path, preset)


def parse_encoder_specs(specs: Iterable[str]) -> list[EncoderSpec]:
    """Every ``--encoder`` parsed, with distinct names (each is a key of the result)."""
    parsed = [parse_encoder_spec(s) for s in specs]
    names = [s.name for s in parsed]
    if dup := next((n for n in names if names.count(n) > 1), None):
        raise MIMFlowError(f"--encoder: two encoders named {dup!r}; name them: --encoder NAME=PATH[:PRESET]")
    return parsed


class Encoder:
    """A loaded TorchScript encoder with its preprocessing: uint8 NHWC images -> (N, d) float32 features."""

    def __init__(self, spec: EncoderSpec, device: str | torch.device = "cpu"):
        if not is_torchscript(spec.path):
            raise MIMFlowError(f"--encoder {spec.path}: not a TorchScript file (save one with "
                               "torch.jit.trace(model, example).save(PATH))")
        try:
            self.module = load_torchscript(spec.path, device).eval()
        except (RuntimeError, ValueError) as e:
            raise MIMFlowError(f"--encoder {spec.path}: not a loadable TorchScript file "
                               f"({str(e).strip().splitlines()[0][:120]})") from None
        self.spec, self.device, self.preset = spec, torch.device(device), ENCODER_PRESETS[spec.preset]
        self.sha256 = file_sha256(spec.path)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cache_key(self) -> str:
        """What the features depend on: the file's bytes and the preprocessing."""
        return f"encoder {self.sha256} {self.spec.preset}"

    def identity(self) -> dict:
        p = self.preset
        return {"path": str(self.spec.path.resolve()), "sha256": self.sha256, "preset": self.spec.preset,
                "preprocessing": {"input": "RGB in [0, 1], NCHW float32",
                                  "resize": f"bicubic (antialiased), clamped to [0, 1], {p.size}x{p.size} px"
                                  if p.size else "none (the images' own size)",
                                  "mean": list(p.mean), "std": list(p.std)}}

    def preprocess(self, images_nhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> the encoder's float input."""
        x = torch.as_tensor(images_nhwc).to(self.device).permute(0, 3, 1, 2).float() / 255
        if self.preset.size is not None and x.shape[-2:] != (self.preset.size,) * 2:
            x = F.interpolate(x, size=(self.preset.size,) * 2, mode="bicubic", align_corners=False,
                              antialias=True).clamp_(0, 1)
        mean = torch.tensor(self.preset.mean, device=self.device)[:, None, None]
        std = torch.tensor(self.preset.std, device=self.device)[:, None, None]
        return (x - mean) / std

    @torch.inference_mode()
    def features(self, images_nhwc: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, d) features of one uint8 NHWC batch, refused in one line when the output is not (N, d) numbers."""
        try:
            out = self.module(self.preprocess(images_nhwc))
        except RuntimeError as e:  # e.g. a fixed input size the preset does not give
            raise MIMFlowError(f"--encoder {self.spec.path}: failed on a batch of {tuple(images_nhwc.shape)} "
                               f"uint8 images with preset {self.spec.preset} "
                               f"({str(e).strip().splitlines()[-1][:120]})") from None
        n = len(images_nhwc)
        if not torch.is_tensor(out) or out.dim() != 2 or len(out) != n:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise MIMFlowError(f"--encoder {self.spec.path}: output {got} for {n} images; an encoder must "
                               "return one (N, d) tensor of features")
        if not torch.isfinite(out).all():
            raise MIMFlowError(f"--encoder {self.spec.path}: NaN or Inf features")
        return out.float().cpu().numpy()

    def check(self, image_size: tuple[int, int]) -> None:
        """Run the encoder on a grey probe batch of the images' size: a wrong output fails before any real work."""
        self.features(np.full((_PROBE_IMAGES, *image_size, 3), 128, np.uint8))


def load_encoders(specs: Iterable[EncoderSpec], device: str | torch.device,
                  image_size: tuple[int, int]) -> list[Encoder]:
    """Load and probe every encoder (one line for the first that fails)."""
    encoders = [Encoder(spec, device) for spec in specs]
    for encoder in encoders:
        encoder.check(image_size)
    return encoders


def npz_encoder_features(encoder: Encoder, path: str | os.PathLike, batch_size: int = 64) -> np.ndarray:
    """An encoder's features of an ADM npz's ``arr_0``, streamed ``batch_size`` images at a time."""
    with open_images(path) as reader:
        batches = with_progress(reader.batches(batch_size), len(reader), f"{encoder.name} {Path(path).name}")
        return np.concatenate([encoder.features(batch) for batch in batches])
