"""Training losses: L2 with a masked-patch weight, LPIPS, auxiliary feature targets, GAN hinge, and their sum.

The flow NLL itself comes from :meth:`MIMFlow.nll` (per dimension, plus bits/dim);
:class:`TrainingLoss` weighs it against the others.
Auxiliary targets are pluggable (``--aux``): ``hog`` (built in), ``ts:PATH``
(a TorchScript feature model on disk, e.g. an exported DINO or CLIP) and
``hub:DIR:ENTRY`` (a torch.hub repository checked out on disk); several join
with ``+`` (``hog+ts:dino.pt``). Every target is computed under ``no_grad``
(the ``sg`` of paper Eq. 7).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mimflow_core.data import as_rgb
from mimflow_core.errors import MIMFlowError
from mimflow_core.hog import hog_dim, hog_patch_targets
from mimflow_core.layers import patchify

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------- reconstruction
def masked_l2(recon: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch_size: int,
              masked_weight: float = 1.0) -> torch.Tensor:
    """Mean squared error over the whole image, masked patches weighted by ``masked_weight`` (Table 9).

    Unmasked patches keep weight 1 and the mean is over all pixels, so weight 1
    is the plain MSE.
    """
    per_patch = patchify((recon.float() - images.float()).pow(2), patch_size).mean(-1)  # (B, N)
    weight = 1.0 + (masked_weight - 1.0) * mask.float()
    return (weight * per_patch).mean()


class PerceptualLoss(nn.Module):
    """LPIPS (v0.1, VGG16 trunk) with the trunk's weights read from a local torchvision file.

    The ``lpips`` package ships only its linear calibration layers; the VGG16
    convolutions come from ``backbone`` (a torchvision ``vgg16`` state dict,
    e.g. ``vgg16-397923af.pth``), so nothing is downloaded.
    """

    def __init__(self, backbone: str | Path):
        super().__init__()
        import lpips

        state = _load_state_dict(Path(backbone), "--lpips-backbone")
        self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        trunk = {}
        for key, value in state.items():
            if key.startswith("features."):
                index = int(key.split(".")[1])
                if index < 30:
                    trunk[f"slice{_vgg_slice(index)}.{key[len('features.'):]}"] = value
        expected = self.lpips.net.state_dict()
        if set(trunk) != set(expected) or any(trunk[k].shape != expected[k].shape for k in expected):
            raise MIMFlowError(f"{backbone}: --lpips-backbone is not a torchvision vgg16 state dict "
                               f"(need keys features.0..28.weight/bias)")
        self.lpips.net.load_state_dict(trunk)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # always eval: LPIPS has dropout layers

    def forward(self, recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance of images in [-1, 1] (greyscale images are compared as RGB)."""
        return self.lpips(as_rgb(recon.float()), as_rgb(images.float())).mean()


def _vgg_slice(index: int) -> int:
    """Which of LPIPS's five VGG slices holds ``features.<index>`` (boundaries 4, 9, 16, 23, 30)."""
    return next(s for s, end in enumerate((4, 9, 16, 23, 30), start=1) if index < end)


def _load_state_dict(path: Path, option: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MIMFlowError(f"{option}: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        raise MIMFlowError(f"{option}: cannot read {path} as a state dict ({str(e).splitlines()[0][:120]})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MIMFlowError(f"{option}: {path} does not hold a state dict")
    return state


def build_perceptual(weight: float, backbone: str | Path | None) -> PerceptualLoss | None:
    """The LPIPS module when ``weight > 0``; a one-line error saying how to provide the VGG16 weights."""
    if weight <= 0:
        return None
    if backbone is None:
        raise MIMFlowError(
            f"--perceptual-weight {weight}: LPIPS needs VGG16 weights, and none are downloaded here. "
            "Pass --lpips-backbone PATH to torchvision's vgg16 state dict (vgg16-397923af.pth, e.g. from "
            "~/.cache/torch/hub/checkpoints/ on a machine with internet), or --perceptual-weight 0")
    return PerceptualLoss(backbone)


# ---------------------------------------------------------------------------- adversarial
def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: mean relu(1 - D(x)) + mean relu(1 + D(x_hat)) (halved, as in taming)."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator (decoder) loss: -mean D(x_hat)."""
    return -fake_logits.mean()


# ---------------------------------------------------------------------------- auxiliary targets
class AuxTarget(nn.Module):
    """One per-patch feature target: ``forward(images) -> (B, N, dim)``, never trained."""

    name: str
    dim: int


class HOGTarget(AuxTarget):
    def __init__(self, patch_size: int):
        super().__init__()
        self.name, self.patch_size, self.dim = "hog", patch_size, hog_dim(patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return hog_patch_targets(images, self.patch_size)


class FeatureModelTarget(AuxTarget):
    """Patch features of a frozen network (DINO, CLIP, ...), resampled to the encoder's patch grid.

    Input: images in [-1, 1] -> [0, 1] -> resized to ``input_size`` -> normalised
    with ``mean``/``std``. Output accepted as (B, C, h, w) maps, (B, T, C) token
    sequences whose last h*w tokens form a square grid (leading CLS/register
    tokens are dropped), or DINOv2's ``forward_features`` dict. Each patch
    vector is layer-normalised, so targets of different networks share a scale.
    """

    def __init__(self, net: Callable[[torch.Tensor], object], name: str, grid: int, input_size: int = 224,
                 norm: str = "imagenet"):
        super().__init__()
        if norm not in ("imagenet", "clip"):
            raise MIMFlowError(f"--aux {name}: norm must be imagenet or clip, not {norm!r}")
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if norm == "imagenet" else (CLIP_MEAN, CLIP_STD)
        self.net, self.name, self.grid, self.input_size = net, name, grid, input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for p in net.parameters():  # TorchScript modules have no requires_grad_()
            p.requires_grad_(False)
        net.eval()
        with torch.no_grad():
            self.dim = self.forward(torch.zeros(1, 3, input_size, input_size)).shape[-1]

    def train(self, mode: bool = True) -> "FeatureModelTarget":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((as_rgb(images.float()) + 1) / 2, size=(self.input_size,) * 2, mode="bicubic",
                          align_corners=False)
        x = (x - self.mean) / self.std
        # hub ViTs (DINOv2) return only the CLS token from forward(); their patch tokens come from forward_features
        out = self.net.forward_features(x) if hasattr(self.net, "forward_features") else self.net(x)
        if isinstance(out, dict):
            out = out.get("x_norm_patchtokens", next(iter(out.values())))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim == 3:  # (B, T, C) tokens
            side = math.isqrt(out.shape[1])
            if out.shape[1] - side * side > 16:
                raise MIMFlowError(f"--aux {self.name}: cannot find a square token grid in output {tuple(out.shape)}")
            out = out[:, -side * side:].transpose(1, 2).reshape(out.shape[0], -1, side, side)
        if out.ndim != 4:
            raise MIMFlowError(f"--aux {self.name}: expected (B,C,h,w) or (B,T,C) features, got {tuple(out.shape)}")
        out = F.adaptive_avg_pool2d(out.float(), self.grid) if out.shape[-1] >= self.grid else \
            F.interpolate(out.float(), size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        tokens = out.flatten(2).transpose(1, 2)  # (B, N, C), row-major like patchify
        return F.layer_norm(tokens, tokens.shape[-1:])


class AuxTargets(nn.Module):
    """Several targets concatenated along the feature axis; the loss is reported per target."""

    def __init__(self, targets: list[AuxTarget]):
        super().__init__()
        self.targets = nn.ModuleList(targets)
        self.dim = sum(t.dim for t in targets)
        self.names = [t.name for t in targets]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(images) for t in self.targets], dim=-1)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean squared error per target over the masked patches (all patches when nothing is masked)."""
        select = mask if bool(mask.any()) else torch.ones_like(mask)
        weight = select.float()[..., None] / select.float().sum()
        losses, start = {}, 0
        for t in self.targets:
            err = (pred[..., start:start + t.dim].float() - target[..., start:start + t.dim]).pow(2).mean(-1, True)
            losses[f"aux_{t.name}"] = (weight * err).sum()
            start += t.dim
        losses["aux"] = sum(losses.values()) / len(self.targets)
        return losses


def _parse_options(text: str, spec: str) -> tuple[str, dict[str, str]]:
    head, *rest = text.split(",")
    options = {}
    for item in rest:
        if "=" not in item:
            raise MIMFlowError(f"--aux {spec}: option {item!r} is not key=value")
        k, v = item.split("=", 1)
        options[k.strip()] = v.strip()
    unknown = set(options) - {"size", "norm", "weights", "name"}
    if unknown:
        raise MIMFlowError(f"--aux {spec}: unknown option(s) {', '.join(sorted(unknown))} (size, norm, weights, name)")
    return head, options


def build_aux_targets(spec: str, patch_size: int, grid: int) -> AuxTargets | None:
    """Parse ``--aux``: ``none`` | ``hog`` | ``ts:PATH[,size=224][,norm=imagenet|clip][,name=N]`` |
    ``hub:DIR:ENTRY[,weights=PATH][,size=..][,norm=..]``, joined with ``+``."""
    if spec in ("", "none"):
        return None
    targets: list[AuxTarget] = []
    for part in spec.split("+"):
        if part == "hog":
            targets.append(HOGTarget(patch_size))
            continue
        kind, _, rest = part.partition(":")
        if kind not in ("ts", "hub") or not rest:
            raise MIMFlowError(f"--aux: unknown target {part!r} (use none, hog, ts:PATH or hub:DIR:ENTRY, joined by +)")
        head, opts = _parse_options(rest, part)
        size, norm = int(opts.get("size", 224)), opts.get("norm", "imagenet")
        if kind == "ts":
            path = Path(head).expanduser()
            if not path.is_file():
                raise MIMFlowError(f"--aux {part}: no such TorchScript file {path}")
            try:
                net = torch.jit.load(str(path), map_location="cpu")
            except RuntimeError as e:
                raise MIMFlowError(f"--aux {part}: not a TorchScript file ({str(e).splitlines()[0][:100]})") from None
            name = opts.get("name", path.stem)
        else:
            repo, _, entry = head.rpartition(":")
            if not Path(repo).expanduser().is_dir() or not entry:
                raise MIMFlowError(f"--aux {part}: expected hub:DIR:ENTRY with DIR a local torch.hub repository")
            net = torch.hub.load(str(Path(repo).expanduser()), entry, source="local", pretrained=False)
            if "weights" in opts:
                net.load_state_dict(_load_state_dict(Path(opts["weights"]).expanduser(), f"--aux {part}"))
            name = opts.get("name", entry)
        targets.append(FeatureModelTarget(net, name, grid, size, norm))
    return AuxTargets(targets)


# ---------------------------------------------------------------------------- the objective of a step
class TrainingLoss:
    """One training step's loss from the model's outputs (``recon``, ``nll``, ``aux``; paper §3.2-3.3):

        L = L2(x, D(z_hat)) [+ w_p LPIPS] + beta * NLL_flow(z_hat) + gamma * L_aux [+ alpha * hinge_g]

    A term is there when its output is: each stage computes only the outputs of what it trains. The
    GAN term (phase 2, ``disc`` given) sees the discriminator's weights detached, so it trains only
    the decoder; the discriminator has its own step. Returns the total and every term as a float.
    """

    def __init__(self, patch_size: int, mim_weight: float, perceptual_weight: float, aux_weight: float,
                 gan_weight: float, perceptual: PerceptualLoss | None = None, aux_targets: AuxTargets | None = None,
                 disc: nn.Module | None = None):
        self.patch_size, self.mim_weight, self.perceptual_weight = patch_size, mim_weight, perceptual_weight
        self.aux_weight, self.gan_weight = aux_weight, gan_weight
        self.perceptual, self.aux_targets, self.disc = perceptual, aux_targets, disc

    def __call__(self, out: dict, images: torch.Tensor, mask: torch.Tensor,
                 beta: float) -> tuple[torch.Tensor, dict[str, float]]:
        total = torch.zeros((), device=images.device)
        logs: dict[str, float] = {}
        if "recon" in out:
            recon = out["recon"].float()
            rec = masked_l2(recon, images, mask, self.patch_size, self.mim_weight)
            total = total + rec
            logs["rec_l2"] = rec.item()
            if self.perceptual is not None:
                perc = self.perceptual(recon, images)
                total = total + self.perceptual_weight * perc
                logs["lpips"] = perc.item()
        if "nll" in out:
            total = total + beta * out["nll"]["loss"]
            logs["beta"] = beta
            logs["nll"] = out["nll"]["loss"].item()
            logs["bpd"] = out["nll"]["bpd"].mean().item()
        if "aux" in out:
            aux = self.aux_targets.loss(out["aux"], self.aux_targets(images), mask)
            total = total + self.aux_weight * aux["aux"]
            logs.update({k: v.item() for k, v in aux.items()})
        if self.disc is not None:
            frozen = {k: p.detach() for k, p in self.disc.named_parameters()}
            g_loss = hinge_g_loss(functional_call(self.disc, frozen, (recon,)))
            total = total + self.gan_weight * g_loss
            logs["gan_g"] = g_loss.item()
        return total, logs
